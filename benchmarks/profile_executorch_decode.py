"""Decode loop to profile (perf record -D 5000 -e cpu-clock -- python benchmarks/profile_executorch_decode.py DIR)."""
import sys
import time

from gemma_edge.runtime_py import load

s = load(sys.argv[1] if len(sys.argv) > 1 else "artifacts/vs_llamacpp/gemma3-270m/executorch", threads=2)
s.prefill(list(range(3, 131)))
t0 = time.perf_counter()
n = 0
while time.perf_counter() - t0 < float(sys.argv[2] if len(sys.argv) > 2 else 8):
    s.pos = 128
    s.decode(5)
    n += 1
print(n / (time.perf_counter() - t0), "tok/s")
