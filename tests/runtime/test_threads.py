"""Sessions under threads: one Session shared by 8 threads (each call holds the session's lock), and
separate Sessions in separate threads, each give exactly the single-threaded tokens."""

import threading

import pytest

from gemma_edge.runtime_py import load

PROMPTS = [[2, 5 + 7 * i, 11 + i] for i in range(8)]


def _hammer(sessions, calls: int = 50) -> tuple[list, list]:
    """Thread i generates from PROMPTS[i] ``calls`` times on sessions[i]; (wrong results, errors)."""
    ref = [sessions[0].generate(p, max_new_tokens=8) for p in PROMPTS]
    wrong, errors = [], []

    def work(i):
        try:
            for _ in range(calls):
                got = sessions[i].generate(PROMPTS[i], max_new_tokens=8)
                if got != ref[i]:
                    wrong.append((i, got, ref[i]))
        except Exception as e:  # reported by the assertion below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(map(tuple, ref))) > 1  # the prompts lead to different tokens: a mix-up would show
    return wrong, errors


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_one_session_shared_by_eight_threads(artifact, backend):
    s = load(artifact("tiny-gemma3", backend=backend))
    wrong, errors = _hammer([s] * 8)
    assert not errors and not wrong[:3]


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_two_sessions_in_two_threads(artifact, backend):
    d = artifact("tiny-gemma3", backend=backend)
    wrong, errors = _hammer([load(d), load(d)])
    assert not errors and not wrong[:3]
