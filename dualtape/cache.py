"""The tape cache behind ``grad``, ``value_and_grad`` and ``jacobian``.

Tapes are kept per call signature (shapes of the traced arguments, values of the static
ones), several per signature with their guard outcomes, most recently used first and
bounded, so code alternating between two branches does not re-record at every call and a
sweep over many shapes does not grow without limit. A replay whose guard flips moves on to
the next tape of the signature and, when none fits, records a new one at this point.

Arrays that ``f`` captures (closure cells, referenced module globals, default arguments)
are fingerprinted at recording: their identity, shape, dtype and a sample of their values
(every element for arrays of up to 64 elements, 64 evenly spread elements for larger
ones). A changed fingerprint drops the tapes. Data that changes between calls belongs in
the arguments; ``cache=False`` records at every call.
"""
import collections

import numpy as np

from . import kernels as K
from .tapes import DIFF, PARAM, STATIC, GuardFlipped, classify, record, static_key

MAX_SIGNATURES = 32
TAPES_PER_SIGNATURE = 8
_ONE_SEED = np.ones((1, 1))
_SAMPLE = 64


def fingerprint(f):
    """Cheap identity-and-sample fingerprint of the arrays f closes over."""
    arrays = []
    for cell in getattr(f, "__closure__", None) or ():
        try:
            arrays.append(cell.cell_contents)
        except ValueError:
            pass
    code = getattr(f, "__code__", None)
    glb = getattr(f, "__globals__", {})
    if code is not None:
        arrays += [glb[name] for name in code.co_names if name in glb]
    arrays += list(getattr(f, "__defaults__", None) or ())
    out = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            flat = a.reshape(-1)
            if flat.size > _SAMPLE:
                flat = flat[np.linspace(0, flat.size - 1, _SAMPLE).astype(np.int64)]
            out.append((id(a), a.shape, a.dtype.str, flat.tobytes()))
    return tuple(out)


class TapeCache:
    def __init__(self, f, argnums, enabled=True):
        self.f = f
        self.argnums = argnums
        self.enabled = enabled
        self.tapes = collections.OrderedDict()   # signature -> [Tape, ...] (MRU first)
        self.fingerprint = None
        self.records = 0                          # how many times f was recorded

    def signature(self, args):
        sig = []
        for i, a in enumerate(args):
            if type(a) is np.ndarray and a.dtype.kind == "f":
                sig.append(a.shape)
            elif isinstance(a, float) and i not in self.argnums:
                sig.append(())
            else:
                kind, v = classify(a, i in self.argnums)
                sig.append(np.shape(v) if kind != STATIC else static_key(v))
        return tuple(sig)

    def _record(self, args, sig):
        tp = record(self.f, args, self.argnums)
        self.records += 1
        if self.enabled:
            if not self.tapes:
                self.fingerprint = fingerprint(self.f)
            tapes = self.tapes.setdefault(sig, [])
            tapes.insert(0, tp)
            del tapes[TAPES_PER_SIGNATURE:]
            self.tapes.move_to_end(sig)
            while len(self.tapes) > MAX_SIGNATURES:
                self.tapes.popitem(last=False)
        return tp

    def run(self, args, seeds):
        """(tape, value, gradient rows) at args, replaying a cached tape when one fits."""
        sig = self.signature(args)
        tapes = self.tapes.get(sig) if self.enabled else None
        if tapes and self.fingerprint != fingerprint(self.f):
            self.tapes.clear()
            tapes = None
        if tapes:
            xin = tapes[0].pack(args)
            for j, tp in enumerate(tapes):
                status, y, g = tp.run_vjp(xin, seeds(tp))
                if status == K.OK:
                    if j:
                        tapes.insert(0, tapes.pop(j))
                    self.tapes.move_to_end(sig)
                    return tp, y, g
                if status < K.OK:
                    tp.check(status)
        tp = self._record(args, sig)
        status, y, g = tp.run_vjp(tp.pack(args), seeds(tp))
        tp.check(status)   # a fresh recording replays its own branch
        return tp, y, g

    def value_and_grad(self, args):
        tp, y, g = self.run(args, _scalar_seed)
        if tp.out_size != 1:
            raise ValueError(f"grad needs a scalar output, but {tp.name} returns shape "
                             f"{tp.out_shape}; use jacobian or vjp")
        return y[0], tp._unpack_grad(g[0])

    def jacobian(self, args):
        tp, y, g = self.run(args, _identity_seeds)
        return tp._unpack_grad(g.reshape(tp.out_shape + (tp.nx,)))


def _scalar_seed(tp):
    return _ONE_SEED if tp.out_size == 1 else np.ones((1, tp.out_size))


_EYES = {}


def _identity_seeds(tp):
    m = tp.out_size
    eye = _EYES.get(m)
    if eye is None:
        eye = np.eye(m)
        if m <= 1024:
            _EYES[m] = eye
    return eye


__all__ = ["TapeCache", "fingerprint", "GuardFlipped", "DIFF", "PARAM"]
