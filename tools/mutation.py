"""Mutation check of the Python layer: inject plausible one-line bugs one at a time and run
the whole suite against each; a mutant is *killed* when some test fails.

    python tools/mutation.py            # every mutant (about 20 s each on 2 cores)
    python tools/mutation.py 3 7        # only these indices

Not part of the default test run. It edits the working tree and restores every file (also
on Ctrl-C); run it on a clean checkout. The compiled kernels are not mutated here (each
mutant would need a rebuild); their tests compare every op with tests/reference.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (file, original text, mutated text): each original occurs exactly once in its file.
MUTANTS = [
    ('cybn/ops/_bn.py', 'update_running(rv, var, momentum, count / (count - 1) if unbiased else 1.0)',
     'update_running(rv, var, momentum, count / count if unbiased else 1.0)'),
    ('cybn/ops/_bn.py', '    update_running(rm, mean, momentum, 1.0)',
     '    update_running(rm, mean, 1.0 - momentum, 1.0)'),
    ('cybn/ops/batchnorm.py', '    elif view.count == 1:\n',
     '    elif view.count == 0:\n'),
    ('cybn/ops/_schedule.py', 'return 1 if size < MIN_PARALLEL_SIZE',
     'return 1 if size <= MIN_PARALLEL_SIZE'),
    ('cybn/ops/stats.py', '    denom = view.count - ddof',
     '    denom = view.count - ddof + 1'),
    ('cybn/ops/stats.py', 'var = m2 / denom if denom > 0',
     'var = m2 / denom if denom >= 0'),
    ('cybn/ops/stats.py', 'def moments(x, *, axis: int = 1, ddof=0):',
     'def moments(x, *, axis: int = -1, ddof=0):'),
    ('cybn/ops/stats.py', '        return np.full(C, np.nan), np.full(C, np.nan)',
     '        nan = np.full(C, np.nan)\n        return nan, nan'),
    ('cybn/ops/batchnorm.py', '    return batch_norm_infer(x, running_mean, running_var, weight, bias, eps=eps,',
     '    return batch_norm_infer(x, running_mean, running_var, bias, weight, eps=eps,'),
    ('cybn/ops/batchnorm.py', '    if training:\n        y, _, _ = batch_norm_train(',
     '    if not training:\n        y, _, _ = batch_norm_train('),
    ('cybn/ops/conventions.py', 'return momentum if self.momentum_weights == "new" else 1.0 - momentum',
     'return momentum'),
    ('cybn/ops/masked.py', '    d = -a * invstd * invstd * sum_dy_xmu / count',
     '    d = -a * invstd * sum_dy_xmu / count'),
    ('cybn/ops/_bn.py', '    if buffer.flags.c_contiguous:',
     '    if True:'),
    ('cybn/ops/_schedule.py', '    if slab * view.channels <= half_cache:',
     '    if False:'),
    ('cybn/ops/_schedule.py', '    return nbytes >= threshold',
     '    return True'),
    ('cybn/_validate.py', '    if np.shares_memory(rm, rv):',
     '    if False:'),
    ('cybn/_validate.py', '    if out.shape != tuple(shape):',
     '    if out.size != int(np.prod(shape)):'),
    ('cybn/_validate.py', '    if isinstance(v, np.ma.MaskedArray):',
     '    if False:'),
    ('cybn/_validate.py', '    if isinstance(value, (bool, np.bool_)):\n        return bool(value)',
     '    if True:\n        return bool(value)'),
    ('cybn/_validate.py', '        if name in in_place_ok and same_view(out, arr):',
     '        if name in in_place_ok:'),
    ('cybn/_validate.py', '        raise ValueError(f"{name} is read-only;',
     '        pass\n    if False:\n        raise ValueError(f"{name} is read-only;'),
    ('cybn/nn/batchnorm.py', '            return 1.0 / float(self.num_batches_tracked + 1)',
     '            return 1.0 / float(self.num_batches_tracked + 2)'),
    ('cybn/nn/batchnorm.py', '        if update and counted:\n            self.num_batches_tracked[...] += 1',
     '        if update and counted:\n            pass'),
    ('cybn/nn/batchnorm.py', '            self.running_var.fill(1)',
     '            self.running_var.fill(0)'),
    ('cybn/nn/batchnorm.py', '        batch_stats = not self.track_running_stats or (self.training and not self.frozen)',
     '        batch_stats = self.training and not self.frozen'),
    ('cybn/nn/batchnorm.py', '                self.weight.grad += grads[1]',
     '                self.weight.grad = grads[1]'),
    ('cybn/nn/linear.py', '        self.weight.grad += _matmul.matmul_sum(dy.T, x)',
     '        self.weight.grad = _matmul.matmul_sum(dy.T, x)'),
    ('cybn/nn/pooling.py', '        arg = flat.argmax(axis=-1)',
     '        arg = (flat.shape[-1] - 1) - flat[..., ::-1].argmax(axis=-1)'),
    ('cybn/nn/activation.py', '        keep = ~(x <= 0)',
     '        keep = x > 0'),
    ('cybn/nn/activation.py', '        return np.where(keep.astype(bool), dy, dy.dtype.type(0))',
     '        return dy * keep'),
    ('cybn/nn/module.py', '        object.__setattr__(self, "_cache", None)\n',
     ''),
    ('cybn/nn/module.py', '        for key, value in converted.items():\n            np.copyto(',
     '            np.copyto(targets[key], value, casting="unsafe")\n        for key, value in converted.items():\n            np.copyto('),
    ('cybn/nn/conv.py', '        self.padding = int_pair(padding, "padding", minimum=0)',
     '        self.padding = int_pair(padding, "padding", minimum=-9)'),
    ('cybn/train.py', '            total += value * len(idx)',
     '            total += value'),
    ('cybn/train.py', '            if len(idx) < 2:',
     '            if len(idx) < 1:'),
    ('cybn/train.py', '        model.train()\n',
     '\n'),
    ('cybn/train.py', '                    work += self.momentum * buf',
     '                    work += buf'),
    ('cybn/train.py', '            v += (1 - b2) * (g * g)',
     '            v += (1 - b1) * (g * g)'),
    ('cybn/train.py', '        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t',
     '        c1, c2 = 1.0, 1 - b2 ** self.t'),
    ('cybn/train.py', '    if n and (targets.min() < 0 or targets.max() >= k):',
     '    if n and (targets.min() < 0 or targets.max() > k):'),
    ('cybn/train.py', '    grad /= n\n',
     '\n'),
    ('cybn/train.py', '        if not np.isfinite(train_loss):',
     '        if np.isnan(train_loss):'),
    ('cybn/train.py', '        if self.weight_decay and getattr(p, "decay", True):',
     '        if self.weight_decay:'),
    ('cybn/train.py', '    return threadpool_limits(limits=1, user_api="blas")',
     '    import contextlib\n    return contextlib.nullcontext()'),
    ('cybn/train.py', '    if min(batch_size, len(X)) < 2:',
     '    if min(batch_size, len(X)) < 1:'),
    ('cybn/ops/norms.py', '    if count == 1:\n',
     '    if count == 0:\n'),
    ('cybn/ops/norms.py', '                         unbiased=True)',
     '                         unbiased=False)'),
    ('cybn/ops/norms.py', 'float(np.finfo(dtype).eps) if eps is None',
     '1e-5 if eps is None'),
    ('cybn/ops/norms.py', '    dweight = (sum_dy_xmu * _per_channel(invstd, C)).sum(axis=0)',
     '    dweight = sum_dy_xmu.sum(axis=0)'),
    ('cybn/ops/norms.py', '    if x.shape[x.ndim - len(shape):] != shape:',
     '    if x.size != x.size:'),
    ('cybn/ops/norms.py', 'samples.N * groups < MIN_GROUP_ROWS',
     'samples.N * groups < 0'),
    ('cybn/ops/norms.py', '            bound.arguments["eps"] = _half_eps(half)',
     '            bound.arguments["eps"] = 1e-6'),
    ('cybn/ops/_bn.py', '    return np.dtype(np.float32) if x.dtype.itemsize == 2 else x.dtype',
     '    return x.dtype'),
    ('cybn/ops/batchnorm.py', "    fscale = w * inv  # the forward's scale, as the kernels compute it",
     "    fscale = w  # the forward's scale, as the kernels compute it"),
    ('cybn/ops/_bn.py', '    return (_kernels.EP_RELU if relu else 0) | (',
     '    return (0 if relu else 0) | ('),
    ('cybn/nn/_args.py', '        return dy.astype(x.dtype)',
     '        return dy'),
    ('cybn/deploy.py', '            name = _epilogue_name(after)',
     '            name = "relu"'),
    ('cybn/train.py', '                share = len(idx) / n_batch',
     '                share = 1.0'),
    ('cybn/distributed.py', '            self.weight.grad += (sum_dy_xmu * invstd).astype(self.weight.grad.dtype)',
     '            self.weight.grad += (g_dy_xmu * invstd).astype(self.weight.grad.dtype)'),
    ('cybn/ops/_bn.py', '        var = m2 / count\n',
     '        var = m2 / (count - 1)\n'),
    ('cybn/deploy.py', '            bn.running_var[...] = m2 / count',
     '            bn.running_var[...] = m2 / (count - 1)'),
    ('cybn/_matmul.py', '    if bias is not None:\n        out += bias',
     '    if bias is not None and out.ndim == 2:\n        out += bias'),
    ('cybn/_matmul.py', '        return np.matmul(a, b).sum(axis=0) if a.ndim == 3 else a @ b',
     '        return np.matmul(a, b).sum(axis=1) if a.ndim == 3 else a @ b'),
    ('cybn/ops/variants.py', '    r = np.clip(np.sqrt(var + eps) / sigma_run, 1.0 / rmax, rmax)',
     '    r = np.clip(np.sqrt(var + eps) / sigma_run, 0.0, rmax)'),
    ('cybn/ops/variants.py', '    dweight = r * dw_hat.astype(np.float64) + d * db.astype(np.float64)',
     '    dweight = r * dw_hat.astype(np.float64)'),
    ('cybn/ops/conventions.py', '    Convention("keras", "biased", "old", 0.99, 1e-3),',
     '    Convention("keras", "unbiased", "old", 0.99, 1e-3),'),
    ('cybn/interop.py', '    names = (["gamma"] if scale else []) + (["beta"] if center else []) + \\',
     '    names = (["beta"] if center else []) + (["gamma"] if scale else []) + \\'),
    ('cybn/train.py', '            if not p.requires_grad:\n                continue\n            g = self._grad(p, work)\n            if self.momentum:',
     '            g = self._grad(p, work)\n            if self.momentum:'),
    ('cybn/nn/batchnorm.py', '        if not self.frozen:\n            if self.scale:',
     '        if True:\n            if self.scale:'),
    ('cybn/ops/variants.py', '                update_running_stats(rm, rv, mean[g], var[g], n, momentum, unbiased)',
     '                update_running_stats(rm, rv, mean[0], var[g], n, momentum, unbiased)'),
    ('cybn/nn/module.py', '        if layers:\n            layers[0].backward_parameters(dy)',
     '        if layers:\n            pass'),
    # hostile use: the five unguarded behaviours an independent mutation run found
    ('cybn/nn/conv.py', '        dx = dxp[:, ph:hp - ph, pw:wp - pw, :]',
     '        dx = dxp[:, pw:hp - pw, ph:wp - ph, :]'),
    ('cybn/nn/pooling.py', '                g = np.where(arg == i * kw + j, dy, 0)',
     '                g = np.where(arg == i * kh + j, dy, 0)'),
    ('cybn/distributed.py', '    for part in gathered[1:]:\n        total += part',
     '    for part in gathered[:0:-1]:\n        total += part'),
    ('cybn/train.py', '                share = len(idx) / n_batch',
     '                share = 1.0 / comm.size'),
    ('cybn/interop.py', '_real(attrs.get("momentum", 0.9), "momentum")',
     '_real(attrs.get("momentum", 0.99), "momentum")'),
    # hostile use: the checks added for it
    ('cybn/nn/module.py', '    if arr.shape != tuple(shape):\n        raise ValueError(f"{layer}.backward',
     '    if arr.ndim != len(shape):\n        raise ValueError(f"{layer}.backward'),
    ('cybn/nn/module.py', '        if dy is not _NO_GRAD:\n            dy = grad_output(dy, output_shape(saved), type(self).__name__)\n        object.__setattr__(self, "_cache", None)',
     '        object.__setattr__(self, "_cache", None)\n        if dy is not _NO_GRAD:\n            dy = grad_output(dy, output_shape(saved), type(self).__name__)'),
    ('cybn/nn/pooling.py', "        (kind, shape, dtype, arg), dy = self._take_saved(dy, lambda saved: saved[3].shape)",
     "        (kind, shape, dtype, arg), dy = self._take_saved(dy, lambda saved: dy.shape)"),
    ('cybn/nn/conv.py', '        saved, dy = self._take_saved(dy, lambda saved: self._output_shape(saved[-1]))',
     '        saved, dy = self._take_saved(dy, lambda saved: np.shape(dy))'),
    ('cybn/ops/variants.py', '        if degenerate[k]:  # the policy, by the full op',
     '        if k == len(parts) - 1 and degenerate[k]:  # the policy, by the full op'),
    ('cybn/ops/variants.py', '    if not degenerate[0] and _ghost_kernel_applies(',
     '    if _ghost_kernel_applies('),
    ('cybn/ops/variants.py', '        if on_degenerate == "use_running" and rm is None:\n            raise',
     '        if False:\n            raise'),
    ('cybn/ops/variants.py', '        flags = [check_bool(t, f"training[{i}]") for i, t in enumerate(training)]',
     '        flags = [bool(t) for t in training]'),
    ('cybn/ops/variants.py', '    mean = shaped_array(mean, "mean", (G, C), what=rows)',
     '    mean = np.asarray(mean, dtype=np.float64)'),
    ('cybn/nn/batchnorm.py', '        if mask is not None and (self.renorm or self.ghost_batch_size is not None):',
     '        if False:'),
    ('cybn/ops/masked.py', '    live = d != 0',
     '    live = np.isfinite(d)'),
    ('cybn/distributed.py', '    failed = [r for r, h in enumerate(every) if h[0] != 0.0]',
     '    failed = [r for r, h in enumerate(every) if h[0] != 0.0 and r == comm.rank]'),
    ('cybn/distributed.py', '        agree(self.comm, "SyncBatchNorm: inputs (channels, dtype code, rank)",',
     '        if error is not None:\n            raise error\n        agree(self.comm, "SyncBatchNorm: inputs (channels, dtype code, rank)",'),
    ('cybn/train.py', '    if comm is not None and min(batch_size, len(X)) < comm.size:',
     '    if False:'),
    ('cybn/train.py', '    _probe(model, X, y, fn, "fit (X, y)")',
     '    pass'),
    ('cybn/interop.py', '        unknown = [k for k in d.keys() if k not in allowed]',
     '        unknown = []'),
    ('cybn/interop.py', '    if isinstance(model, (str, os.PathLike)) or hasattr(model, "read"):',
     '    if True:'),
    ('cybn/ops/variants.py', '            return start if t == 0.0 else limit if t == 1.0 else start + (limit - start) * t',
     '            return start + (limit - start) * t'),
    ('cybn/ops/stats.py', '        return mean.copy() if self.count else np.full(len(mean), np.nan)',
     '        return mean.copy()'),
    ('cybn/_matmul.py', '            out[...] = dest',
     '            pass'),
    ('cybn/ops/conv.py', '        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)',
     '        flipped = weight[:, :, ::-1, :].transpose(1, 0, 2, 3)'),
    ('cybn/ops/conv.py', '        swapped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)',
     '        swapped = weight[:, :, :, ::-1].transpose(1, 0, 2, 3)'),
    ('cybn/ops/conv.py', '    return max(-(-n // MAX_CHUNKS), -(-_matmul.MIN_CHUNK // max(pixels, 1)))',
     '    return 0'),
    ('cybn/nn/batchnorm.py', '            invstd = 1.0 / np.sqrt(s.running_var.astype(np.float64) + self.eps)',
     '            invstd = 1.0 / np.sqrt(s.running_var.astype(np.float64))'),
    ('cybn/nn/batchnorm.py', '                if update:\n                    self.num_batches_tracked[...] += 1\n                self._cache',
     '                self._cache'),
    ('cybn/nn/batchnorm.py', '                activation == "relu", self.running_variance == "unbiased")',
     '                activation == "relu", True)'),
    ('cybn/_matmul.py', '        y = apply_activation(matmul(x, weight.T, bias=bias), act)',
     '        y = apply_activation(matmul(x, weight.T), act)'),
    ('cybn/ops/pool.py', '    fast = _kernels.fast_relu(x, keep_out, inplace, _schedule.threads_for(x.size))',
     '    fast = _kernels.fast_relu(x, keep_out, False, _schedule.threads_for(x.size))'),
    ('cybn/ops/pool.py', '    return x.mean(axis=axes, keepdims=True)\n    x = np.ascontiguousarray(x)',
     '    return x.mean(axis=axes, keepdims=True)\n    x = np.ascontiguousarray(x)\n    channels_last = not channels_last'),
    ('cybn/nn/conv.py', '            dy = _matmul.activation_grad(*fused, dy,\n                                         None if with_residual else self._workspace)',
     '            pass'),
    ('cybn/nn/conv.py', '        inside = fusable and (self.channels_last or residual is None)',
     '        inside = fusable'),
    ('cybn/nn/linear.py', '            dy = _matmul.activation_grad(*fused, dy, self._workspace)',
     '            pass'),
    ('cybn/_matmul.py', '    return np.where((y <= 0) | (y >= 6), dy.dtype.type(0), dy)',
     '    return np.where(y <= 0, dy.dtype.type(0), dy)'),
    ('cybn/deploy.py', '                joins.activation = _epilogue_name(layer)  # the ReLU after a folded BatchNorm',
     '                keep.append(layer)'),
    ('cybn/deploy.py', '        folded_sc = None if sc is None else _fold_nested(sc, into, f"{path}.{sc_name}",',
     '        folded_sc = None if sc is None else (lambda *a: copy.deepcopy(sc))(sc, into, f"{path}.{sc_name}",'),
    ('cybn/nn/residual.py', '                or (type(last) is Conv2d and last.activation is None):',
     '                or False:'),
    ('cybn/ops/pool.py', '    if ceil and (out - 1) * s >= size + p:\n        out -= 1',
     '    if False:\n        out -= 1'),
    ('cybn/ops/pool.py', '    return (o * size) // out, -((-(o + 1) * size) // out)',
     '    return (o * size) // out, ((o + 1) * size) // out'),
    ('cybn/deploy.py', '        return nn.Concat(*[_fold_nested(b, into, f"{path}.{i}", not_folded)',
     '        return nn.Concat(*[copy.deepcopy(b)'),
    ('cybn/nn/branches.py', '        split = (g, C // g) if not inverse else (C // g, g)',
     '        split = (g, C // g)'),
    ('cybn/nn/module.py', '            layer_input(x, type(self).__name__)  # the forward converts x as it needs',
     '            pass'),
    # 2026-12-06 evening: builders, ONNX, the rows route's backward, fused-activation grads
    ('cybn/_matmul.py', '            _kernels.activation_backward(flat, g, dx.reshape(-1), 0, 0.0, 6.0,',
     '            _kernels.activation_backward(flat, g, dx.reshape(-1), 0, 0.0, 7.0,'),
    ('cybn/ops/conv.py', '    return np.ascontiguousarray(taps.reshape(cin, kh, kw, out)[:, ::-1, ::-1, :]).reshape(cin,',
     '    return np.ascontiguousarray(taps.reshape(cin, kh, kw, out)[:, :, :, :]).reshape(cin,'),
    ('cybn/nn/conv.py', 'rows = transposed_flipped_rows(w, weight_as_is(n, *xh.shape[1:3], cin))',
     'rows = transposed_flipped_rows(w, weight_as_is(n, ho, wo, cin))'),
    ('cybn/onnx_export.py', '        perm = np.arange(c).reshape(g, c // g).T.reshape(-1)',
     '        perm = np.arange(c).reshape(g, c // g).reshape(-1)'),
    ('cybn/onnx_import.py', '            if relu is not None and relu.op_type == "Relu":',
     '            if False:'),
    ('cybn/onnx_export.py', '        return w.node("Concat", outs, hint, axis=1), rank_i, total',
     '        return w.node("Concat", outs[::-1], hint, axis=1), rank_i, total'),
    ('cybn/nn/dropout.py', '        if survival > 0.0:\n            scale /= x.dtype.type(survival)',
     '        if False:\n            scale /= x.dtype.type(survival)'),
    ('cybn/nn/residual.py', '            return [x for layer in m for x in opened(layer)] if isinstance(m, Sequential) \\',
     '            return [m] if isinstance(m, Sequential) \\'),
    ('cybn/models.py', '            stride = 2 if stage > 0 and i == 0 else 1',
     '            stride = 2 if i == 0 else 1'),
    # 2026-12-06 night: batch norm ending in ReLU6, LeakyReLU, SiLU, Hardswish
    ('cybn/ops/_bn.py', 'POST_ACTIVATIONS = {"relu6": ("hardtanh", 0.0, 6.0), "leaky_relu": ("leaky_relu", 0.01, 0.0),',
     'POST_ACTIVATIONS = {"relu6": ("hardtanh", 0.0, 6.0), "leaky_relu": ("leaky_relu", 0.02, 0.0),'),
    ('cybn/ops/_bn.py', '    y[...] = pool.activation(y.astype(np.float64), kind, a, b).astype(y.dtype)',
     '    y[...] = y'),
    ('cybn/ops/_bn.py', '                       residual=residual, ep=epilogue(False, residual))',
     '                       residual=residual, ep=0)'),
    ('cybn/ops/variants.py', '            z[s] = pre_activation(x[s], view.axis, mean[i], invstd[i], w, b,',
     '            z[s] = pre_activation(x[s], view.axis, mean[0], invstd[0], w, b,'),
    ('cybn/deploy.py', '                    if layer.activation in ("relu", "relu6") and _takes_relu(prev):',
     '                    if _takes_relu(prev):'),
]
MUTANTS = [m for m in MUTANTS if m[1]]


def run_suite() -> bool:
    """True when the suite passes (the mutant survived)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    return done.returncode == 0


def main(argv: list[str]) -> int:
    chosen = [int(a) for a in argv] or list(range(len(MUTANTS)))
    killed, survived = 0, []
    for i in chosen:
        path, old, new = MUTANTS[i]
        full = os.path.join(ROOT, path)
        with open(full) as f:
            text = f.read()
        if text.count(old) != 1:
            print(f"[{i}] {path}: original text found {text.count(old)} times: fix the list")
            return 2
        start = time.perf_counter()
        try:
            with open(full, "w") as f:
                f.write(text.replace(old, new))
            alive = run_suite()
        finally:
            with open(full, "w") as f:
                f.write(text)
        status = "SURVIVED" if alive else "killed"
        print(f"[{i:2d}] {status:8s} {time.perf_counter() - start:5.1f} s  {path}: "
              f"{old.strip().splitlines()[0][:70]}", flush=True)
        if alive:
            survived.append(i)
        else:
            killed += 1
    total = len(chosen)
    print(f"killed {killed} of {total} ({100.0 * killed / total:.0f}%); survived: {survived}")
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
