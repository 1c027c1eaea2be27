"""The command line: usage errors instead of tracebacks, quiet when piped into head."""

import subprocess
import sys

import pytest


def cybn_cli(*args, stdin_head=False):
    cmd = [sys.executable, "-m", "cybn", *args]
    if stdin_head:  # `python -m cybn info | head -0`: the reader is gone before any output
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        return proc.wait(timeout=120), "", err
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("args,match", [
    (("--layouts", "XYZ"), "--layouts: XYZ not in NCHW, NHWC"),
    (("--dtype", "float16"), "--dtype: float16 not in float32, float64"),
    (("--dtype", "float32,int8"), "--dtype: int8 not in"),
    (("--repeats", "0"), "--repeats"),
    (("--scaling", "1,x"), "--scaling: expected positive integers"),
])
def test_bench_rejects_bad_options_with_a_usage_error(args, match):
    code, out, err = cybn_cli("bench", "--no-torch", "--quick", *args)
    assert code == 2
    assert match in err
    assert "Traceback" not in err and out == ""


def test_info_piped_into_head_exits_quietly():
    code, _, err = cybn_cli("info", stdin_head=True)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert code == 0


def test_demo_without_scikit_learn_says_how_to_install_it(monkeypatch):
    import cybn.demo as demo

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(SystemExit, match=r'pip install "cybn\[demo\]"'):
        demo.load_digits_split()
