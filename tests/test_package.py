"""The package layout: every public name of the first version still works from the top
level and from its old module, and imports go one way (nn -> ops -> _validate -> _kernels)."""

import ast
import pathlib

import pytest

import cybn

PACKAGE = pathlib.Path(cybn.__file__).parent

FIRST_VERSION_NAMES = [
    "batch_norm_train", "batch_norm_infer", "batch_norm_backward", "batch_norm", "moments",
    "Parameter", "Module", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Linear", "Conv2d",
    "ReLU", "Dropout", "MaxPool2d", "Flatten", "Sequential",
    "cross_entropy", "mse_loss", "SGD", "Adam", "fit", "evaluate", "predict",
    "get_num_threads", "set_num_threads", "show_config", "MAX_THREADS", "__version__",
]


def test_every_public_name_resolves_and_the_first_versions_names_are_kept():
    assert len(cybn.__all__) == len(set(cybn.__all__))
    for name in cybn.__all__:
        assert getattr(cybn, name) is not None, name
    assert set(FIRST_VERSION_NAMES) <= set(cybn.__all__)


@pytest.mark.parametrize("old, new", [("functional", "ops"), ("layers", "nn")])
def test_old_module_names_reexport_the_new_modules(old, new):
    old_mod, new_mod = getattr(cybn, old), getattr(cybn, new)
    assert list(old_mod.__all__) == list(new_mod.__all__)
    for name in new_mod.__all__:
        assert getattr(old_mod, name) is getattr(new_mod, name) is getattr(cybn, name)


def imported_modules(path: pathlib.Path) -> set:
    """The cybn modules one source file imports, as dotted names relative to cybn."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level])
                parts = base + (node.module.split(".") if node.module else [])
                if node.module is None:  # from . import a, b
                    found.update(".".join(base + [a.name]) for a in node.names)
                else:
                    found.add(".".join(parts))
            elif node.module and node.module.startswith("cybn."):
                found.add(node.module[len("cybn."):])
        elif isinstance(node, ast.Import):
            found.update(a.name[len("cybn."):] for a in node.names if a.name.startswith("cybn."))
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("ops", ("nn", "train", "layers", "functional", "bench", "demo")),
    ("nn", ("_kernels", "train", "bench", "demo")),
])
def test_imports_go_one_way(package, forbidden):
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in forbidden, f"{path.name} imports {module}"


def test_the_import_checker_sees_relative_imports():
    found = imported_modules(PACKAGE / "nn" / "batchnorm.py")
    assert "ops" in found and "_validate" in found
