"""export/executorch_backend/planning.py: buffer-mutation outputs planned as the buffers they are.
ExecuTorch's own Verifier checks that no two tensors alive at the same time share bytes; the
program gives eager torch's outputs, state included, over several calls; and the arena loses the
second copy of the state that ExecuTorch's stock pass plans."""

import copy

import pytest
import torch
from torch import nn

SLOTS, D, LAYERS = 512, 32, 4  # the caches dominate the arena, as in a decoder at long context


class ToyDecoder(nn.Module):
    """Layers that each write a cache row per position and read the cache, the state written as
    export/executorch_backend/wrappers.py writes it (a functional index_copy, copied back)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ModuleList([nn.Linear(D, 4 * D) for _ in range(LAYERS)])
        self.down = nn.ModuleList([nn.Linear(4 * D, D) for _ in range(LAYERS)])
        for i in range(LAYERS):
            self.register_buffer(f"cache{i}", torch.zeros(SLOTS, D))

    def forward(self, x, pos):
        for i, (up, down) in enumerate(zip(self.up, self.down)):
            cache = getattr(self, f"cache{i}").index_copy(0, pos, x)
            getattr(self, f"cache{i}").copy_(cache)
            x = x + down(torch.relu(up(x))) + cache.sum(0, keepdim=True)
        return x


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    from executorch.exir import ExecutorchBackendConfig, to_edge
    from executorch.exir.passes import MemoryPlanningPass

    from gemma_edge.export.executorch_backend.planning import memory_planning_pass

    torch.manual_seed(0)
    model = ToyDecoder().eval()
    d = tmp_path_factory.mktemp("plan")
    res = {"model": model}
    for name, planner in (("stock", MemoryPlanningPass), ("ours", memory_planning_pass)):
        with torch.no_grad():
            ep = torch.export.export(copy.deepcopy(model), (torch.randn(1, D), torch.tensor([0])), strict=False)
            et = to_edge(ep).to_executorch(ExecutorchBackendConfig(memory_planning_pass=planner(),
                                                                   run_reinplace_pass=True))  # fmt: skip
        (d / f"{name}.pte").write_bytes(et.buffer)
        res[name] = (et, d / f"{name}.pte", sum(et.executorch_program.execution_plan[0].non_const_buffer_sizes))
    return res


def test_no_live_tensors_share_bytes(programs):
    from executorch.exir.memory_planning import Verifier

    ep = programs["ours"][0].exported_program()
    v = Verifier(ep.graph_module, alloc_graph_input=True, alloc_graph_output=True, alloc_mutable_buffers=True,
                 graph_signature=ep.graph_signature)  # fmt: skip
    assert v.verify_storage_reuse(allow_lifetime_and_storage_overlap=False) > 0  # reuses, never clashes


def test_planned_program_matches_eager_across_calls(programs):
    from executorch.runtime import Runtime

    model, path = programs["model"], programs["ours"][1]
    method = Runtime.get().load_program(str(path)).load_method("forward")
    g = torch.Generator().manual_seed(1)
    for p in (0, 1, 2, 7, 1):  # each call reads the caches the earlier calls wrote
        x = torch.randn(1, D, generator=g)
        want = model(x, torch.tensor([p]))
        got = method.execute([x, torch.tensor([p])])[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_arena_holds_one_copy_of_the_state(programs):
    state = LAYERS * SLOTS * D * 4
    stock, ours = programs["stock"][2], programs["ours"][2]
    assert stock >= 2 * state, (stock, state)  # the stock pass plans the caches twice
    assert state <= ours < 1.1 * state, (ours, state)  # once, plus a few KiB of activations
