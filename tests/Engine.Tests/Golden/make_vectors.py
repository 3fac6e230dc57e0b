"""Writes solver test vectors from the spec's independent fp64 numpy golden model.

Run once with numpy available (Debian: apt-get install python3-numpy):
    /usr/bin/python3 tests/Engine.Tests/Golden/make_vectors.py ../shared/spec/checks
The output, ref_vectors.json, is committed; the C# tests read it and need no Python.
"""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "../shared/spec/checks"))
from ref import run, rtn  # noqa: E402

rng = np.random.default_rng(1234)
m, n, k = 16, 40, 512
A = rng.standard_normal((n, n)) * 0.1 + 0.9 * rng.standard_normal((n, 1))
Xf = A @ rng.standard_normal((n, k)) + 0.5 * rng.standard_normal((n, 1))
Xq = Xf + 0.3 * (rng.standard_normal((n, n)) / np.sqrt(n)) @ Xf + 0.05 * rng.standard_normal((n, k))
Xq[7, :] = 0.0          # a dead input channel in the quant stream
Xf[7, :] = 0.0
W = rng.standard_normal((m, n)) / np.sqrt(n)
H = 2.0 / k * Xq @ Xq.T
D = 2.0 / k * (Xf - Xq) @ Xq.T

cases = [
    dict(name="gptq_3b_asym_perchannel", bits=3, sym=False),
    dict(name="gptq_4b_sym_g8_actorder_B16", bits=4, sym=True, gs=8, actorder=True, B=16),
    dict(name="gptq_2b_asym_g8_B8", bits=2, sym=False, gs=8, B=8),
    dict(name="gptq_3b_asym_g16_B32_stale_grid", bits=3, sym=False, gs=16, B=32),
    dict(name="gptaq_3b_asym", bits=3, sym=False, D=True, alpha=0.25),
    dict(name="gptaq_3b_quarot_sym_g8_actorder", bits=3, sym=True, style="quarot", gs=8, actorder=True, D=True, alpha=0.25),
    dict(name="gptaq_rescomp_3b_asym_B16", bits=3, sym=False, D=True, alpha=0.25, alpha2=0.25, B=16),
    dict(name="gptq_rescomp_2b_asym", bits=2, sym=False, alpha2=0.25),
    dict(name="gptq_4b_asym_damp05", bits=4, sym=False, percdamp=0.5),
]
out = {"m": m, "n": n, "W": W.ravel().tolist(), "H": H.ravel().tolist(), "D": D.ravel().tolist(), "cases": []}
for c in cases:
    kw = {key: v for key, v in c.items() if key not in ("name", "D")}
    Q, errsq, _, _ = run(W, H, D if c.get("D") else None, **kw)
    out["cases"].append({**{key: v for key, v in c.items() if key != "D"}, "useD": bool(c.get("D")),
                         "Q": Q.ravel().tolist(), "loss": float(errsq)})
for bits, sym in ((4, False), (3, True)):
    out["cases"].append({"name": f"rtn_{bits}b_{'sym' if sym else 'asym'}", "rtn": True, "bits": bits, "sym": sym,
                         "Q": rtn(W, bits, sym).ravel().tolist(), "loss": None})
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref_vectors.json")
with open(path, "w") as f:
    json.dump(out, f, allow_nan=True)
print("wrote", path, len(out["cases"]), "cases")
