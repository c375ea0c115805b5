"""training/: tiny pre-training runs (1 and 2 processes), exact resume after SIGKILL, scaler
learning, evaluation, and clear errors for bad configs and data."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = [sys.executable, str(ROOT / "training" / "pretrain.py"), "--config", str(ROOT / "training" / "configs" / "tiny.yaml")]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
NO_EVAL = "final_eval={sizes: null}"


def run(cmd: list[str], timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return result


def template_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "template.safetensors")
    for path in sorted((folder / "scalers").glob("*.safetensors")):
        tensors.update({f"{path.stem}.{k}": v for k, v in load_file(path).items()})
    return tensors


def test_tiny_pretraining_writes_a_template_with_card_and_metrics(tmp_path):
    out = tmp_path / "run"
    run([*PRETRAIN, f"output_dir={out}"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["images_seen"] == 6 * 32
    sizes = {(r["depth"], r["width"]): r for r in summary["metrics"]["sizes"]}
    assert set(sizes) == {(2, 32), (3, 48), (2, 64)} and sizes[(2, 64)]["init"] == "derived from 3x48"
    assert 10 < summary["metrics"]["raw_pixels_knn"] <= 100
    card = (out / "template" / "README.md").read_text()
    assert "training/pretrain.py" in card and "images seen" in card and "k-NN" in card
    assert (out / "loss.png").stat().st_size > 0 and len((out / "train_log.csv").read_text().splitlines()) == 7
    from sweet_hub import SweetTemplate

    assert SweetTemplate.from_pretrained(out / "template").materialize(5, 80).embed_dim == 80


@pytest.mark.parametrize("overrides, card_text", [
    # views come with their crop boxes and the loss reads their token matches (here from the batched views)
    (["dense_weight=0.5", "batched_augment=true"], "images seen"),
    (["erase_p=0.5", "proj_norm=batch"], "images seen"),
    (["objective=barlow", "proj_norm=batch"], "Barlow Twins loss (lambda=0.005)"),  # the card names the loss
], ids=["dense", "erase_batchnorm", "barlow"])
def test_recipe_options_pre_train_end_to_end(tmp_path, overrides, card_text):
    """pretrain.py with each recipe option trains two steps with a finite positive loss and saves a template."""
    out = tmp_path / "run"
    run([*PRETRAIN, f"output_dir={out}", *overrides, "max_steps=2", NO_EVAL])
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == 3 and 0 < float(rows[-1].split(",")[1]) < float("inf")
    assert (out / "template" / "template.safetensors").is_file()
    assert card_text in (out / "template" / "README.md").read_text()


def _hadamard_views() -> torch.Tensor:
    """(8, 4) projections whose columns have zero mean, unit variance and no correlation (Hadamard columns)."""
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:5]


def test_barlow_loss_is_zero_at_the_identity_and_counts_each_correlation():
    """C = I scores 0 (whatever each dimension's scale and shift); an anti-correlated view scores (1 - (-1))^2 per
    dimension; a dimension that mixes in another adds lambda * C_ij^2, all divided by the width."""
    from training.selfsup import barlow_loss

    z = _hadamard_views()
    assert barlow_loss([z, z * 3 + 1], [z], lambd=0.5, same_views=False).item() == pytest.approx(0.0, abs=1e-6)
    assert barlow_loss([z, -z], [z, -z], lambd=0.5, same_views=True).item() == pytest.approx(4.0, abs=1e-4)
    mixed = z.clone()
    mixed[:, 0] = (z[:, 0] + z[:, 1]) / 2 ** 0.5  # C_00 = C_01 = 1/sqrt(2) against z
    expected = ((1 - 2 ** -0.5) ** 2 + 0.5 * 0.5) / 4  # diagonal miss of dim 0 + lambda * C_01^2, over d=4
    assert barlow_loss([mixed], [z], lambd=0.5, same_views=False).item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("method", ["sweet", "single", "poa"])
def test_barlow_objective_reaches_every_methods_loss(method):
    """objective=barlow: the head's projections are not L2-normalized and the loss moves with barlow_lambda (an
    InfoNCE loss would not read it)."""
    from training.config import load_config
    from training.pretrain import build_method

    def loss_of(*overrides: str) -> tuple[torch.nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        module = build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml",
                                          [f"method={method}", "size=[3,48]", "proj_norm=batch", *overrides]))
        size = module.sample_size(__import__("random").Random(0))
        torch.manual_seed(1)
        views = [torch.randn(8, 1, 28, 28) for _ in range(2)]
        return module, module(views, [], size)

    module, low = loss_of("objective=barlow", "barlow_lambda=0")
    assert module.head.objective == "barlow"
    assert not torch.allclose(module.head(torch.randn(4, module.head.mlp.fc1.in_features)).norm(dim=-1), torch.ones(4))
    _, high = loss_of("objective=barlow", "barlow_lambda=1")
    assert high.item() > low.item() + 1e-3
    _, infonce = loss_of("barlow_lambda=1")
    _, infonce_default = loss_of()
    assert infonce.item() == pytest.approx(infonce_default.item())


@pytest.mark.parametrize("method", ["sweet", "single", "poa"])
def test_proj_norm_puts_batchnorm_in_every_methods_head(method):
    from training.config import load_config
    from training.pretrain import build_method

    def head(*overrides: str) -> torch.nn.Module:
        return build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml", [f"method={method}", *overrides])).head

    assert isinstance(head("proj_norm=batch").mlp.norm, torch.nn.BatchNorm1d)
    assert isinstance(head().mlp.norm, torch.nn.Identity)


def test_time_budget_stops_the_run_and_drives_the_schedule(tmp_path):
    out = tmp_path / "budget"
    run([*PRETRAIN, f"output_dir={out}", "max_steps=100000", "time_budget_minutes=0.05", "anchor_weights=[0,1]",
         "width_scaling_max=64", NO_EVAL])
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= summary["steps"] < 100000 and summary["train_seconds"] >= 3.0  # stopped by time, not by max_steps
    from training.pretrain import CSVLog

    rows = CSVLog.read(out / "train_log.csv")
    # anchor_weights=[0, 1]: only the 3-deep anchor (and its stochastic widths, up to 64) is trained
    assert {int(r["depth"]) for r in rows} == {3}
    assert max(int(r["width"]) for r in rows) <= 64


def test_time_progress_drives_the_cosine_schedule():
    from training.pretrain import _progress
    from training.selfsup import cosine_schedule

    assert _progress(10, 100_000, seconds=30.0, budget=60.0) == 0.5  # time, not steps
    assert _progress(50, 100, seconds=1.0, budget=None) == 0.5
    assert _progress(10, 100, seconds=90.0, budget=60.0) == 1.0
    assert cosine_schedule(100, 100_000, 10, 1e-3, 1e-5, progress=1.0) == pytest.approx(1e-5)
    assert cosine_schedule(100, 100_000, 10, 1e-3, 1e-5, progress=0.5) == pytest.approx((1e-3 + 1e-5) / 2)


def test_two_process_ddp_run(tmp_path):
    out = tmp_path / "ddp"
    run([ACCELERATE, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", *PRETRAIN[1:], f"output_dir={out}", NO_EVAL])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_seen"] == 6 * 32
    assert (out / "template" / "template.safetensors").is_file()


def test_gradient_accumulation_and_bf16(tmp_path):
    out = tmp_path / "ga"
    run([*PRETRAIN, f"output_dir={out}", "grad_accum=2", "mixed_precision=bf16", "max_steps=3", NO_EVAL])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_seen"] == 3 * 32  # batch_size counts images per optimizer step, accumulation included
    assert all(v.dtype == torch.float32 for v in template_tensors(out / "template").values())  # master weights stay fp32


def _logged_step(output_dir: Path) -> int:
    """The last step in the run's CSV log (0 before the first)."""
    log = output_dir / "train_log.csv"
    lines = log.read_text().splitlines() if log.is_file() else []
    return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0


def _kill_at(cmd: list[str], output_dir: Path, after_step: int, in_save: bool = False) -> bool:
    """Run ``cmd``, SIGKILL it once step ``after_step`` is logged, or (``in_save``) as soon as a checkpoint
    is being written after that; returns whether a checkpoint was being written at that moment."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _logged_step(output_dir) < after_step:
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, f"step {after_step} not reached within 240 s"
        time.sleep(0.005)
    while in_save and proc.poll() is None and not any((output_dir / "checkpoints").glob(".tmp_step_*")):
        time.sleep(0.001)
    during_save = any((output_dir / "checkpoints").glob(".tmp_step_*"))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return during_save


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Kill a run at several moments (every other kill inside save_state), resume each time from the
    newest complete checkpoint, and end with the parameters of an uninterrupted run."""
    import random

    steps = ["max_steps=24", "save_every=1", "save_total_limit=2", NO_EVAL]
    run([*PRETRAIN, f"output_dir={tmp_path / 'straight'}", *steps])
    killed = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("SWEET_KILL_SEED", "0")))
    kills = int(os.environ.get("SWEET_KILLS", "2"))  # SWEET_KILLS=10 for the full experiment
    cmd = [*PRETRAIN, f"output_dir={killed}", *steps]
    during_save = []
    for i in range(kills):
        # a random moment counted in steps past the last one logged, not in seconds: on a fast machine a random
        # number of seconds can outlast the 24-step run, and the next (in-save) kill then finds no save left
        after_step = min(_logged_step(killed) + rng.randint(1, 3), 23)
        during_save.append(_kill_at(cmd + (["--resume"] if i else []), killed, after_step, in_save=i % 2 == 1))
        if (killed / "summary.json").exists():
            break
    print(f"{len(during_save)} kills, {sum(during_save)} inside save_state")
    assert sum(during_save) >= 1 or len(during_save) < 2
    # run on until two more checkpoints exist, kill, then tear the newest (as a power loss before the data
    # reached the disk would): the resume must skip it and take the one before
    steps_done = lambda: [int(p.name.split("_")[1]) for p in (killed / "checkpoints").glob("step_*")]
    target = max(steps_done()) + 2
    proc = subprocess.Popen(cmd + ["--resume"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while target not in steps_done() and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    newest = killed / "checkpoints" / f"step_{max(steps_done())}"
    torn = next(p for p in newest.rglob("*.safetensors"))
    torn.write_bytes(torn.read_bytes()[:100])
    resumed = run(cmd + ["--resume"])
    assert f"Skipping torn checkpoint {newest}" in resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout + resumed.stderr

    a, b = template_tensors(tmp_path / "straight" / "template"), template_tensors(killed / "template")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    log = (killed / "train_log.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in log[1:]] == list(range(1, 25))  # no duplicated or lost rows


def test_resume_without_checkpoint_and_with_changed_config(tmp_path):
    result = run([*PRETRAIN, f"output_dir={tmp_path / 'none'}", "--resume"], check=False)
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr
    run([*PRETRAIN, f"output_dir={tmp_path / 'r'}", "max_steps=2", "save_every=2", NO_EVAL])
    result = run([*PRETRAIN, f"output_dir={tmp_path / 'r'}", "max_steps=4", "lr=0.5", NO_EVAL, "--resume"], check=False)
    assert result.returncode == 2 and "config differs" in result.stderr and "'lr'" in result.stderr


@pytest.mark.parametrize("override,message", [
    ("learning_rate=0.1", "Unknown config key 'learning_rate'"),
    ("template.rank=[1,2,3]", "Unknown config key 'template.rank'"),
    ("method=dino", "method='dino' is not one of"),
    ("lr=fast", "lr must be a number"),
    ("template.anchors=[[2,30]]", "not a multiple of head_dim"),
    ("grad_accum=5", "divisible by grad_accum=5"),
    ("time_budget_minutes=-1", "time_budget_minutes must be a positive number"),
    ("anchor_weights=[1]", "one non-negative weight per anchor"),
    ("width_scaling_max=40", "width_scaling_max must be an integer >= the largest anchor width"),
    ("recon_weight=-1", "recon_weight must be >= 0"),
    ("mask_ratio=1", "mask_ratio is the fraction of patches hidden"),
    ("mim_weight=1", "mim_weight=1.0 needs mask_ratio > 0"),
    ("mim_separate=true", "only applies with mim_weight > 0"),
    ("scaler_lr_scale=0", "scaler_lr_scale must be > 0"),
    ("inplace_distill=true", "it needs sandwich=true"),
    ("sandwich=3", "sandwich, inplace_distill and sandwich_all are true or false"),
    ("sandwich_all=true", "it needs sandwich=true and no anchor_weights"),
    ("sandwich=true\nsandwich_all=true\nanchor_weights=[1,1]", "it needs sandwich=true and no anchor_weights"),
    ("sandwich=true\nanchor_loss_weights=[1,-1]", "anchor_loss_weights must list one non-negative weight per anchor"),
    ("sandwich=true\nanchor_loss_weights=[1]", "anchor_loss_weights must list one non-negative weight per anchor"),
    ("anchor_loss_weights=[1,1]", "anchor_loss_weights weigh the losses that one update sums, so they need sandwich=true"),
    ("template.anchors=[[3,48]]\nsandwich=true", "needs method=sweet and two or more anchors"),
    ("sandwich=true\nanchor_weights=[0,1]", "gives them no weight"),
    ("dense_weight=-1", "dense_weight=-1.0 matches tokens of two unmasked global views"),
    ("dense_weight=1\nmask_ratio=0.4", "needs n_global >= 2 and mask_ratio=0"),
    ("dense_weight=1\nn_global=1", "needs n_global >= 2 and mask_ratio=0"),
    ("dense_largest_only=true", "only applies with sandwich=true and dense_weight > 0"),
    ("dense_weight=1\ndense_largest_only=true", "only applies with sandwich=true and dense_weight > 0"),
    ("erase_p=2", "erase_p is a probability, in \\[0, 1\\]"),
    ("proj_norm=layer", "proj_norm='layer' is not one of"),
    ("batched_augment=2", "batched_augment is true or false"),
    ("objective=vicreg", "objective='vicreg' is not one of"),
    ("objective=barlow\nteacher=ema", "objective=barlow compares the student's own views \\(teacher=none\\)"),
    ("barlow_lambda=-1", "barlow_lambda must be >= 0"),
])
def test_bad_config_is_a_clear_error(override, message):
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "training" / "configs" / "tiny.yaml", override.split("\n"))


def test_mixed_precision_no_is_accelerates_spelling_not_a_yaml_boolean():
    from training.config import load_config

    assert load_config(ROOT / "training" / "configs" / "tiny.yaml", ["mixed_precision=no"]).mixed_precision == "no"


def test_sandwich_all_trains_every_anchor_in_each_update():
    """sandwich_all: each step's sizes are every anchor (the smaller ones stochastically scaled), and the loss is the sum
    of their objectives."""
    import random

    from training.config import load_config
    from training.methods import SizeChoice
    from training.pretrain import build_method

    def method_for(*overrides: str):
        torch.manual_seed(0)
        return build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml", ["template.anchors=[[2,32],[2,48],[3,64]]",
                                                                                       *overrides]))

    plain, every = method_for(), method_for("sandwich=true", "sandwich_all=true", "width_scaling_p=0")
    size = every.sample_size(random.Random(0))
    assert [s.anchor for s in (size, *size.also)] == [(2, 32), (2, 48)] and not size.stochastic
    assert size.label == "2x32+2x48"  # what the log and the progress bar show (after the largest anchor)
    torch.manual_seed(1)
    views, local = [torch.randn(8, 1, 28, 28) for _ in range(2)], [torch.randn(8, 1, 14, 14)]
    expected = sum(plain(views, local, SizeChoice(a, *a)) for a in [(3, 64), (2, 32), (2, 48)])
    assert every(views, local, size).item() == pytest.approx(expected.item(), rel=1e-5)
    scaled = method_for("sandwich=true", "sandwich_all=true", "width_scaling_p=1").sample_size(random.Random(0))
    assert {s.anchor for s in (scaled, *scaled.also)} == {(2, 32), (2, 48)}
    # anchor_loss_weights: each anchor's term in the sum is weighted (the smaller anchors more, here)
    weighted = method_for("sandwich=true", "sandwich_all=true", "width_scaling_p=0", "anchor_loss_weights=[2,0.5,1]")
    terms = [plain(views, local, SizeChoice(a, *a)) for a in [(2, 32), (2, 48), (3, 64)]]
    expected = 2 * terms[0] + 0.5 * terms[1] + terms[2]
    assert weighted(views, local, size).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sandwich_trains_the_largest_anchor_every_step_beside_a_smaller_size():
    """sandwich: the sampled size is never the largest anchor, and the loss is the largest anchor's plus the sampled
    size's; inplace_distill: the sampled size's targets are the largest anchor's global embeddings, which its term
    does not train (no gradient reaches the largest anchor's scalers from it)."""
    import random

    from training.config import load_config
    from training.methods import SizeChoice
    from training.pretrain import build_method

    def method_for(*overrides: str):
        torch.manual_seed(0)
        return build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml", list(overrides)))

    plain, sandwich, distill = method_for(), method_for("sandwich=true"), method_for("sandwich=true", "inplace_distill=true")
    largest = plain.teacher_size
    assert all(sandwich.sample_size(random.Random(i)).anchor != largest for i in range(50))
    assert any(plain.sample_size(random.Random(i)).anchor == largest for i in range(50))
    torch.manual_seed(1)
    views, local = [torch.randn(8, 1, 28, 28) for _ in range(2)], [torch.randn(8, 1, 14, 14)]
    small = sandwich.sample_size(random.Random(0))
    expected = plain(views, local, SizeChoice(largest, *largest)) + plain(views, local, small)
    assert sandwich(views, local, small).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distill(views, local, small).item() != pytest.approx(expected.item(), rel=1e-3)
    # the distilled loss is the largest anchor's own plus the small size's against its (detached) embeddings
    from training.methods import student_objective_and_views

    def objective(at: SizeChoice, targets):
        return student_objective_and_views(lambda groups: distill.features(at, groups), distill.head, views, local, targets,
                                           0.2, None, distill.patch_size)

    largest_loss, largest_views = objective(SizeChoice(largest, *largest), None)
    small_term = objective(small, [v.detach() for v in largest_views[:2]])[0]
    assert distill(views, local, small).item() == pytest.approx((largest_loss + small_term).item(), rel=1e-5)
    small_term.backward()
    from sweet_hub.config import size_key

    assert all(p.grad is None for p in distill.template.scalers[size_key(*largest)].parameters())
    assert any(p.grad is not None for p in distill.template.scalers[size_key(*small.anchor)].parameters())


def test_scaler_lr_scale_is_refused_for_methods_without_scalers():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="only applies to method=sweet"):
        load_config(ROOT / "training" / "configs" / "tiny.yaml", ["method=single", "size=[3,48]", "scaler_lr_scale=3"])


def test_scaler_lr_scale_moves_only_the_scalers_faster():
    """scaler_lr_scale splits timm's weight-decay groups into scalers and the rest (every parameter in exactly one group);
    set_lr, what the schedule calls each step, then puts the scalers at 3x the rate and everything else at the rate."""
    from training.config import load_config
    from training.pretrain import build_method, param_groups
    from training.selfsup import set_lr

    cfg = load_config(ROOT / "training" / "configs" / "tiny.yaml", ["scaler_lr_scale=3"])
    method = build_method(cfg)
    groups = param_groups(method, cfg.weight_decay, cfg.scaler_lr_scale)
    names = {id(p): n for n, p in method.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # each parameter once
    for group in groups:
        in_scalers = {names[id(p)].startswith("template.scalers.") for p in group["params"]}
        assert in_scalers == {group["lr_scale"] == 3.0}
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_lr(optimizer, 2e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [pytest.approx(2e-3), pytest.approx(6e-3)]
    assert len(param_groups(method, cfg.weight_decay, 1.0)) == 2 and "lr_scale" not in param_groups(method, cfg.weight_decay)[0]


@pytest.mark.parametrize("method", ["sweet", "single", "poa"])
def test_pixel_term_adds_the_read_back_error_and_trains_the_backbone(method):
    """recon_weight adds weight * MSE of a linear read-back of each global view; every method shares it."""
    from training.config import load_config
    from training.pretrain import build_method

    def loss_and_grads(recon_weight: float):
        torch.manual_seed(0)
        cfg = load_config(ROOT / "training" / "configs" / "tiny.yaml", [f"method={method}", "size=[3,48]", f"recon_weight={recon_weight}"])
        module = build_method(cfg)
        size = module.sample_size(__import__("random").Random(0))
        torch.manual_seed(1)
        views = [torch.randn(8, 1, 28, 28) for _ in range(2)]
        loss = module(views, [torch.randn(8, 1, 14, 14)], size)
        loss.backward()
        return module, loss

    plain, without = loss_and_grads(0.0)
    assert plain.head.decoder is None
    module, with_term = loss_and_grads(2.0)
    assert module.head.decoder.out_features == 28 * 28
    # the contrastive part is the same (same seeds, same init of everything but the decoder)
    assert with_term.item() > without.item() + 0.5  # + 2 x MSE of an untrained read-back of unit-variance pixels
    assert module.head.decoder.weight.grad.abs().sum() > 0


def test_patch_masks_hide_exactly_the_marked_patches_in_token_order():
    """patchify follows timm's token order (row-major patches), and apply_patch_masks zeroes
    exactly the patches a mask marks; random_patch_masks hides the same count in every row."""
    from training.selfsup import apply_patch_masks, patchify, random_patch_masks

    images = torch.arange(16.0).view(4, 4).repeat_interleave(7, 0).repeat_interleave(7, 1).expand(2, 1, 28, 28) + 1
    patches = patchify(images, 7)
    assert patches.shape == (2, 16, 49)
    assert torch.equal(patches[0, :, 0], torch.arange(16.0) + 1) and torch.equal(patches.amin(2), patches.amax(2))
    masks = random_patch_masks(2, 16, 0.4, torch.Generator().manual_seed(0))
    assert masks.sum(1).tolist() == [6, 6]
    assert torch.equal(masks, random_patch_masks(2, 16, 0.4, torch.Generator().manual_seed(0)))  # replayable on resume
    hidden = patchify(apply_patch_masks(images, masks, 7), 7)
    assert (hidden[masks] == 0).all() and torch.equal(hidden[~masks], patches[~masks])


@pytest.mark.parametrize("method", ["sweet", "single", "poa"])
def test_masked_patch_term_scores_hidden_patches_and_trains_the_backbone(method):
    """mim_weight adds weight * MSE of the decoded hidden patches (from the masked views' final
    tokens, against the unmasked pixels); with masks but no weight the loss only sees masked views."""
    from training.config import load_config
    from training.pretrain import build_method
    from training.selfsup import random_patch_masks

    def loss_of(mim_weight: float, masked: bool, separate: bool = False):
        torch.manual_seed(0)
        overrides = [f"method={method}", "size=[3,48]", "mask_ratio=0.5", f"mim_weight={mim_weight}", f"mim_separate={separate}"]
        module = build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml", overrides))
        size = module.sample_size(__import__("random").Random(0))
        torch.manual_seed(1)
        views = [torch.randn(8, 1, 28, 28) for _ in range(2)]
        masks = random_patch_masks(16, 16, 0.5, torch.Generator().manual_seed(2)) if masked else None
        loss = module(views, [torch.randn(8, 1, 14, 14)], size, masks=masks)
        loss.backward()
        return module, loss

    _, unmasked = loss_of(0.0, masked=False)
    plain, masked_only = loss_of(0.0, masked=True)
    assert plain.head.token_decoder is None and masked_only.item() != pytest.approx(unmasked.item())
    module, with_term = loss_of(2.0, masked=True)
    assert module.head.token_decoder.out_features == 7 * 7
    assert with_term.item() > masked_only.item() + 0.5  # + 2 x MSE of an untrained decoder on unit-variance pixels
    assert module.head.token_decoder.weight.grad.abs().sum() > 0
    backbone = module.template.cores if method == "sweet" else module.vit
    assert sum(p.grad.abs().sum() for p in backbone.parameters() if p.grad is not None) > 0
    # mim_separate: the contrastive loss sees the unmasked views, only the prediction reads the masked pass
    _, nearly_no_term = loss_of(1e-9, masked=True, separate=True)
    assert nearly_no_term.item() == pytest.approx(unmasked.item(), abs=1e-4)
    _, separate = loss_of(2.0, masked=True, separate=True)
    assert separate.item() > unmasked.item() + 0.5


def test_crops_with_boxes_draws_the_views_of_a_compose_pipeline():
    """crops_with_boxes cuts, flips and jitters one image at a time, drawing random numbers in the
    order v2.Compose does, so turning the dense term on does not change a run's views."""
    from torchvision.transforms import v2

    from training.data import MultiCropAugment, normalize

    images = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    augment = MultiCropAugment(28, (0.3,), (0.4,), n_global=2, n_local=1, local_size=14)
    global_views, local_views, boxes = augment.crops_with_boxes(images, seed=7)
    jitter = v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8)
    compose = lambda size, scale: v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(), jitter])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = [normalize(torch.stack([compose(28, (0.35, 1.0))(i) for i in images]), (0.3,), (0.4,)) for _ in range(2)]
        expected.append(normalize(torch.stack([compose(14, (0.1, 0.35))(i) for i in images]), (0.3,), (0.4,)))
    assert all(torch.equal(a, b) for a, b in zip([*global_views, *local_views], expected))
    assert torch.equal(augment(images, seed=7)[0][1], global_views[1])
    assert len(boxes) == 2 and boxes[0].shape == (6, 5) and set(boxes[0][:, 4].tolist()) <= {0, 1}


def test_random_erasing_blanks_a_rectangle_of_each_global_view_only():
    """erase_p=1: every global view of a white image has a black rectangle of about 2-25% of its area
    (set before normalization, so it reads as the background); local views are never erased."""
    from training.data import MultiCropAugment

    images = torch.full((16, 1, 28, 28), 255, dtype=torch.uint8)
    augment = MultiCropAugment(28, (0.5,), (0.5,), n_global=2, n_local=1, local_size=14, jitter=0.0, erase_p=1.0)
    global_views, local_views = augment(images, seed=3)
    for view in global_views:
        erased = (view == -1.0).flatten(1).float().mean(1)  # (0 - 0.5) / 0.5: a black pixel
        assert ((erased >= 0.015) & (erased <= 0.27)).all()  # 2-25% of the area, the sides rounded to whole pixels
        assert torch.equal(view[view != -1.0], torch.ones_like(view[view != -1.0]))
    assert (local_views[0] == 1.0).all()


def test_token_matches_pair_tokens_that_see_the_same_image_position():
    """Crops of an image whose pixels hold their own coordinates: every matched pair of tokens
    covers nearly the same source point (within one cell of the coarser view), flips included,
    and a token whose centre lies outside the other view has no match."""
    from torchvision.transforms.v2 import functional as TF

    from training.selfsup import token_matches

    grid, patch = 4, 7
    ys, xs = torch.meshgrid(torch.arange(28.0) + 0.5, torch.arange(28.0) + 0.5, indexing="ij")
    source = torch.stack([ys, xs])  # 2 x 28 x 28: (row, column) of each source pixel's centre
    boxes = [torch.tensor([[0, 0, 28, 28, 0], [4, 2, 20, 24, 1], [10, 10, 14, 14, 0]]),
             torch.tensor([[6, 8, 22, 20, 1], [0, 0, 28, 28, 0], [0, 0, 14, 14, 1]])]

    def token_centres(box: torch.Tensor) -> torch.Tensor:
        top, left, height, width, flip = box.tolist()
        view = TF.resized_crop(source, top, left, height, width, [28, 28], antialias=False)
        view = TF.horizontal_flip(view) if flip else view
        return view.unfold(1, patch, patch).unfold(2, patch, patch).mean((-1, -2)).flatten(1).T  # N x 2, row-major

    centres = [torch.cat([token_centres(b) for b in view_boxes]) for view_boxes in boxes]  # (B * N) x 2 per view
    matches = token_matches(boxes, grid)
    assert [(m.a, m.b) for m in matches] == [(0, 1), (1, 0)]
    for m in matches:
        cell = torch.stack([boxes[m.b][:, 2], boxes[m.b][:, 3]], 1).float() / grid  # a cell of view b, in source pixels
        image = m.target // (grid * grid)
        assert (m.student // (grid * grid) == image).all()
        gap = (centres[m.a][m.student] - centres[m.b][m.target]).abs()
        assert (gap <= cell[image] / 2 + 0.01).all()
    # image 2: view 0 holds rows/cols 10..24, view 1 rows/cols 0..14: only the top-left token of view 0 lies in both
    first = matches[0]
    assert (first.student // 16 == 2).sum() == 1
    # a view of the whole image holds every token of the other view: image 1's view 1, image 0's view 0
    assert (first.student // 16 == 1).sum() == 16 and (matches[1].student // 16 == 0).sum() == 16
    assert (first.student // 16 == 0).sum() < 16  # view 1 of image 0 misses part of the image


def _views_and_matches(n_local: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Two global views (and ``n_local`` local ones) of 8 random images, with their token matches (4x4 grid)."""
    from training.data import MultiCropAugment
    from training.selfsup import token_matches

    images = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    global_views, local_views, boxes = MultiCropAugment(28, (0.3,), (0.4,), n_local=n_local).crops_with_boxes(images, seed=1)
    return global_views, local_views, token_matches(boxes, 4)


@pytest.mark.parametrize("method", ["sweet", "single", "poa"])
def test_dense_term_adds_a_token_contrastive_loss_and_trains_the_backbone(method):
    """dense_weight adds weight x the InfoNCE of geometrically matched tokens (dense head of its own);
    without matches (or weight) the loss is the pooled one alone."""
    import random

    from training.config import load_config
    from training.pretrain import build_method

    global_views, local_views, matches = _views_and_matches(n_local=1)

    def loss_of(weight: float, with_matches: bool = True):
        torch.manual_seed(0)
        module = build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml",
                                          [f"method={method}", "size=[3,48]", f"dense_weight={weight}"]))
        loss = module(global_views, local_views, module.sample_size(random.Random(0)), matches=matches if with_matches else None)
        loss.backward()
        return module, loss

    _, plain = loss_of(0.0)
    module, no_matches = loss_of(2.0, with_matches=False)
    assert no_matches.item() == pytest.approx(plain.item(), abs=1e-5)
    module, dense = loss_of(2.0)
    assert module.head.dense.fc2.out_features == module.head.out.out_features
    # 2 x InfoNCE over 8 x 16 candidate tokens (untrained: near log 128 = 4.85, here per student view weighted by sandwich/POA)
    assert dense.item() > plain.item() + 2.0
    assert module.head.dense.fc1.weight.grad.abs().sum() > 0
    backbone = module.template.cores if method == "sweet" else module.vit
    assert sum(p.grad.abs().sum() for p in backbone.parameters() if p.grad is not None) > 0


def test_dense_largest_only_keeps_the_term_off_the_smaller_anchors():
    """With sandwich, dense_largest_only adds the dense term to the largest anchor's loss alone: the loss then lies
    between no dense term and the term on every size in the update."""
    import random

    from training.config import load_config
    from training.pretrain import build_method

    global_views, _, matches = _views_and_matches(n_local=0)

    def loss_of(*overrides: str) -> float:
        torch.manual_seed(0)
        module = build_method(load_config(ROOT / "training" / "configs" / "tiny.yaml", ["sandwich=true", "n_local=0", *overrides]))
        return module(global_views, [], module.sample_size(random.Random(0)), matches=matches).item()

    plain, every, largest = loss_of(), loss_of("dense_weight=1"), loss_of("dense_weight=1", "dense_largest_only=true")
    assert plain + 1.0 < largest < every - 1.0  # each size's untrained dense term is near log(8 x 16) = 4.85


def test_initial_template_starts_sweet_from_its_weights(tmp_path):
    """initial_template copies cores and anchor scalers; learned scalers of other sizes are dropped (stale after training)."""
    from sweet_hub import SweetTemplate
    from training.config import load_config
    from training.pretrain import build_method

    tiny = ROOT / "training" / "configs" / "tiny.yaml"
    torch.manual_seed(3)
    initial = SweetTemplate(load_config(tiny).template_config())
    initial.add_scalers(2, 64, initial.scalers_for(2, 64))
    with torch.no_grad():  # every tensor away from its init (some start as zeros or ones)
        for param in initial.parameters():
            param.add_(torch.randn_like(param))
    initial.save_pretrained(tmp_path / "initial")
    torch.manual_seed(0)
    started = build_method(load_config(tiny, [f"initial_template={tmp_path / 'initial'}"])).template
    fresh = build_method(load_config(tiny)).template
    for key, value in initial.state_dict().items():
        if key.startswith("scalers.d2_w64"):
            assert key not in started.state_dict()
        else:
            assert torch.equal(started.state_dict()[key], value), key
            assert not torch.equal(fresh.state_dict()[key], value), key
    assert started.sizes == [(2, 32), (3, 48)]


def test_initial_template_of_another_shape_or_method_is_refused(tmp_path, template_dir):
    from training.config import ConfigError, load_config
    from training.pretrain import build_method

    tiny = ROOT / "training" / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"another shape than this run's template: template.anchors="):
        build_method(load_config(tiny, [f"initial_template={template_dir}"]))
    with pytest.raises(ConfigError, match="could not be loaded"):
        build_method(load_config(tiny, [f"initial_template={tmp_path / 'missing'}"]))
    with pytest.raises(ConfigError, match="initial_template is a template folder or Hub id for method=sweet"):
        load_config(tiny, ["method=single", f"initial_template={template_dir}"])


def test_cli_errors_exit_2_without_traceback(tmp_path):
    result = run([*PRETRAIN, "learning_rate=0.1"], check=False)
    assert result.returncode == 2 and "Unknown config key" in result.stderr and "Traceback" not in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run([*PRETRAIN, f"output_dir={blocker / 'sub'}"], check=False)
    assert result.returncode == 2 and "is not writable" in result.stderr


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    from sweet_hub import data

    monkeypatch.setattr(data, "FMNIST_DIR", tmp_path / "nothing")
    with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.fashion_mnist("train")
    with pytest.raises(data.DataError, match="not a folder"):
        data.load_image_dataset(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_dataset(tmp_path):
    from PIL import Image

    from training.data import load_image_tensors

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), color=(i * 40, 0, 0)).save(tmp_path / "imgs" / label / f"{i}.png")
    tensors = load_image_tensors(f"imagefolder:{tmp_path / 'imgs'}", "train", 28, 1)
    assert tensors.images.shape == (6, 1, 28, 28) and sorted(tensors.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_template_of_another_format_version_is_refused(tmp_path, template_dir):
    config = json.loads((template_dir / "config.json").read_text())
    config["sweet_format_version"] = 99
    (template_dir / "config.json").write_text(json.dumps(config))
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir),
                  "--depth", "3", "--width", "48"], check=False)
    assert result.returncode == 2 and "sweet_format_version 99 is not supported" in result.stderr


def test_learn_scalers_improves_distillation_and_leaves_template_untouched(template_dir):
    before = (template_dir / "template.safetensors").read_bytes()
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--depth", "3",
                  "--width", "48", "--num-images", "128", "--steps", "25", "--batch-size", "32"])
    facts = json.loads(result.stdout[result.stdout.index("{"):])
    assert facts["distill_loss_after"] < facts["distill_loss_before"]
    assert (template_dir / "template.safetensors").read_bytes() == before
    from sweet_hub import SweetTemplate

    loaded = SweetTemplate.from_pretrained(template_dir)
    assert loaded.scaler_source(3, 48) == "learned"
    assert loaded.scaler_info["d3_w48"]["images"] == 128 and loaded.scaler_info["d3_w48"]["steps"] == 25
    assert "learned" in (template_dir / "README.md").read_text()


def test_learn_scalers_keep_if_better_stores_only_sizes_that_win_on_held_out_train_images(tmp_path, template_dir):
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--sizes", "3x48", "2x64",
                  "--num-images", "128", "--steps", "5", "--batch-size", "32", "--keep-if-better", "--report", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())["sizes"]
    assert set(report) == {"3x48", "2x64"}
    from sweet_hub import SweetTemplate

    loaded = SweetTemplate.from_pretrained(template_dir)
    for size, facts in report.items():
        depth, width = (int(v) for v in size.split("x"))
        scores = facts["validation_knn"]
        assert facts["kept"] == (scores["learned"] > scores["derived"]) and 0 <= scores["derived"] <= 100
        assert loaded.has_scalers(depth, width) == facts["kept"]  # a losing size keeps its derived scalers
        if facts["kept"]:  # the held-out scores that decided it travel with the file (config.json, card)
            info = loaded.scaler_info[f"d{depth}_w{width}"]
            assert (info["held_out_knn_derived"], info["held_out_knn_learned"]) == (scores["derived"], scores["learned"])
    assert "3x48" in result.stdout


def test_learn_scalers_again_continues_the_learned_scalers_and_must_beat_them(tmp_path, template_dir):
    """A second run on a size that ships learned scalers starts from them (its loss before is the first run's loss
    after), and --keep-if-better compares against them (key 'previous'), not against the derived ones."""
    script = [sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--sizes", "3x48",
              "--num-images", "128", "--steps", "5", "--batch-size", "32"]
    run([*script, "--report", str(tmp_path / "first.json")])
    first = json.loads((tmp_path / "first.json").read_text())["sizes"]["3x48"]
    scaler_file = template_dir / "scalers" / "d3_w48.safetensors"
    stored = scaler_file.read_bytes()
    run([*script[:-4], "--steps", "6", "--batch-size", "32", "--keep-if-better", "--report", str(tmp_path / "second.json")])
    second = json.loads((tmp_path / "second.json").read_text())["sizes"]["3x48"]
    assert second["distill_loss_before"] == pytest.approx(first["distill_loss_after"], rel=1e-3)
    scores = second["validation_knn"]
    assert set(scores) == {"previous", "learned"} and second["kept"] == (scores["learned"] > scores["previous"])
    assert second["continued_from"] == "learned scalers (128 images, 5 steps)"
    assert (first["total_steps"], second["total_steps"]) == (5, 11)  # the count over both runs, for the card
    from sweet_hub import SweetTemplate

    info = SweetTemplate.from_pretrained(template_dir).scaler_info["d3_w48"]
    if second["kept"]:
        assert (info["held_out_knn_previous"], info["held_out_knn_learned"]) == (scores["previous"], scores["learned"])
        assert info["total_steps"] == 11
    else:  # the first run's scalers stay, byte for byte
        assert scaler_file.read_bytes() == stored and "held_out_knn_previous" not in info


def test_learn_scalers_of_a_smaller_anchor_start_from_its_pre_trained_scalers(tmp_path, template_dir):
    """An anchor copying a larger anchor: the run starts from (and under --keep-if-better must beat) the anchor's
    pre-trained scalers, which the card names, and whichever wins stays an anchor of the config."""
    run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--sizes", "2x32",
         "--teacher", "4x64", "--num-images", "128", "--steps", "4", "--batch-size", "32", "--keep-if-better",
         "--report", str(tmp_path / "r.json")])
    facts = json.loads((tmp_path / "r.json").read_text())["sizes"]["2x32"]
    assert set(facts["validation_knn"]) == {"anchor", "learned"}
    assert facts["continued_from"] == "the anchor scalers of pre-training" and facts["total_steps"] == 4
    from sweet_hub import SweetTemplate

    loaded = SweetTemplate.from_pretrained(template_dir)
    assert [2, 32] in [list(a) for a in loaded.config.anchors]
    assert loaded.scaler_source(2, 32) == ("learned" if facts["kept"] else "anchor")
    if facts["kept"]:
        assert loaded.scaler_info["d2_w32"]["held_out_knn_anchor"] == facts["validation_knn"]["anchor"]


def test_learn_scalers_copies_the_teacher_it_is_given(tiny_template):
    """--teacher picks the anchor whose tokens are copied: another target, so another loss from the same start."""
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    runs = {}
    for teacher in (None, (2, 32)):
        template = copy.deepcopy(tiny_template)
        runs[teacher] = template.learn_scalers(3, 48, images, steps=2, batch_size=32, progress=False, teacher=teacher)
        assert template.scaler_info["d3_w48"]["teacher"] == runs[teacher]["teacher"]
    assert runs[None]["teacher"] == "4x64" and runs[(2, 32)]["teacher"] == "2x32"
    assert runs[None]["distill_loss_before"] != pytest.approx(runs[(2, 32)]["distill_loss_before"], rel=1e-3)


def test_relation_loss_compares_neighbourhoods_whatever_the_width():
    """Zero when the student's pooled features are the teacher's in a wider space (any rotation and
    scale: only cosine similarities count); positive when the neighbourhoods differ."""
    from sweet_hub.distill import relation_loss

    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, generator=generator)
    embed = torch.linalg.qr(torch.randn(24, 24, generator=generator))[0][:, :8]  # (24, 8), orthonormal columns
    wider = 3.0 * teacher @ embed.T
    assert relation_loss(wider, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert relation_loss(torch.randn(16, 24, generator=generator), teacher).item() > 0.1
    assert relation_loss(wider[:2], teacher[:2]).item() == 0.0  # two images have no neighbours to rank


def test_learn_scalers_relation_weight_adds_the_weighted_relational_term(tiny_template):
    """The loss of a run with relation_weight is the token loss plus w x the relational one, from the same start."""
    from sweet_hub.config import vit_args
    from sweet_hub.data import normalize
    from sweet_hub.distill import TokenDistiller, relation_loss

    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    cfg, teacher = tiny_template.config, tiny_template.config.largest_anchor

    def distiller(weight: float) -> TokenDistiller:
        return TokenDistiller(cfg, dict(tiny_template.cores.items()), tiny_template.scalers_for(3, 48),
                              tiny_template.state_dict_for(*teacher), vit_args(cfg, *teacher),
                              tiny_template.scalers_for(*teacher)["U"] / teacher[1] ** 0.5, relation_weight=weight)

    clean = normalize(images, cfg.mean, cfg.std)
    net = distiller(0.0)
    with torch.no_grad():
        plain, weighted = net(clean), distiller(2.0)(clean)
        _, student = net._nets["student"].run(tiny_template.state_dict_for(3, 48), clean)
        _, target = net._nets["teacher"].run(net.teacher_state, clean)
    assert weighted.item() == pytest.approx((plain + 2.0 * relation_loss(student, target)).item(), rel=1e-4)
    assert weighted.item() > plain.item()
    facts = copy.deepcopy(tiny_template).learn_scalers(3, 48, images, steps=2, batch_size=32, progress=False, relation_weight=2.0)
    assert facts["relation_weight"] == 2.0
    with pytest.raises(ValueError, match="relation_weight must be a number >= 0"):
        distiller(-1.0)


def test_learn_scalers_rejects_a_negative_relation_weight(template_dir):
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--sizes", "3x48",
                  "--relation-weight", "-1"], check=False)
    assert result.returncode == 2 and "--relation-weight must be >= 0" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [(["--sizes", "3x48", "--teacher", "3x32"], "3x32 is not an anchor of this template"),
                                           (["--sizes", "2x32", "--teacher", "2x32"], "2x32 is the teacher itself")])
def test_learn_scalers_rejects_a_bad_teacher_before_reading_data(template_dir, args, message):
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), *args,
                  "--data", "no-such-dataset"], check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_learn_scalers_rejects_mixed_size_arguments(template_dir):
    result = run([sys.executable, str(ROOT / "training" / "learn_scalers.py"), "--template", str(template_dir), "--sizes", "3x48",
                  "--depth", "3"], check=False)
    assert result.returncode == 2 and "either --sizes or --depth" in result.stderr


class _StubAccelerator:
    """The parts of Accelerator that learn_scalers uses, as process `rank` of `world`."""

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes = rank, world

    def prepare(self, *objects):
        return objects

    def unwrap_model(self, model):
        return model

    def backward(self, loss):
        loss.backward()


def test_learn_scalers_gives_each_process_its_own_share_of_the_batch(tiny_template, monkeypatch):
    from sweet_hub import distill
    from training import learn_scalers as ls

    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    original = distill.MultiCropAugment.__call__
    images = torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8)
    for rank in (0, 1):
        monkeypatch.setattr(distill.MultiCropAugment, "__call__", lambda self, x, seed, r=rank: (seen[r].append(x), original(self, x, seed))[1])
        ls.learn_scalers(tiny_template, 3, 48, images, steps=2, batch_size=32, accelerator=_StubAccelerator(rank, 2), progress=False)
    assert [len(x) for x in seen[0]] == [16, 16] and [len(x) for x in seen[1]] == [16, 16]  # 32 over 2 processes
    assert not torch.equal(seen[0][0], seen[1][0])  # different images on different processes


def test_evaluate_cli_writes_json(tmp_path, template_dir):
    out = tmp_path / "eval.json"
    run([sys.executable, str(ROOT / "training" / "evaluate.py"), "--model", "sweet_vit", "--depth", "2", "--width", "32",
         "--template", str(template_dir), "--knn", "--linear-probe", "--finetune-labels", "100", "--finetune-steps", "3",
         "--train-size", "300", "--test-size", "200", "--json", str(out)])
    report = json.loads(out.read_text())
    assert {"knn", "linear_probe", "finetune"} <= set(report) and 0 <= report["knn"] <= 100
    assert report["protocol"]["train"] == 300


def test_evaluate_template_rewrites_the_card_table_and_leaves_the_tensors_untouched(tmp_path, template_dir):
    before = template_tensors(template_dir)
    out = tmp_path / "eval.json"
    run([sys.executable, str(ROOT / "training" / "evaluate_template.py"), "--template", str(template_dir), "--sizes", "2x32", "3x48",
         "--linear-probe", "--finetune-labels", "60", "--finetune-steps", "2", "--seeds", "0", "1", "--train-size", "300",
         "--test-size", "200", "--update-card", "--json", str(out)])
    results = json.loads(out.read_text())
    rows = {(r["depth"], r["width"]): r for r in results["sizes"]}
    assert rows[(2, 32)]["init"] == "anchor" and rows[(3, 48)]["init"].startswith("derived from")
    for row in rows.values():
        for key in ("knn", "linear_probe", "finetune_mean", "knn_random", "linear_probe_random", "finetune_mean_random"):
            assert 0 <= row[key] <= 100, key
        assert row["finetune_seeds"] == 2
    assert {"raw_pixels_knn", "centred_pixels_knn", "pixels_linear_probe"} <= set(results)
    card = (template_dir / "README.md").read_text()
    assert "Weights as shipped" in card and "| 3x48 |" in card and "fine-tune random init" in card
    assert f"{results['centred_pixels_knn']:.1f}% mean-centred" in card
    from sweet_hub import SweetTemplate

    reloaded = SweetTemplate.from_pretrained(template_dir)  # config.json's file hashes still match
    assert reloaded.card_info["metrics_table"].startswith("Weights as shipped")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_table  # the README's section on the bundled template reads this same JSON

    section = "\n".join(readme_table.bundled_section(results))
    assert "| 3x48 | derived from" in section and "mean ± std over 2 seeds" in section
    assert "fine-tuning 10 or more points above random init at" in section and "training/evaluate_template.py" in section
    after = template_tensors(template_dir)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # --reuse: after new scalers for 3x48, only 3x48 is measured again (not its random init); 2x32 (unchanged) comes from the
    # first run
    reloaded.add_scalers(3, 48, {k: v * 1.01 for k, v in reloaded.scalers_for(3, 48).items()}, source="learned")
    reloaded.save_scalers(template_dir, 3, 48)
    again = run([sys.executable, str(ROOT / "training" / "evaluate_template.py"), "--template", str(template_dir), "--sizes", "2x32",
                 "3x48", "--linear-probe", "--finetune-labels", "60", "--finetune-steps", "2", "--seeds", "0", "1", "--train-size",
                 "300", "--test-size", "200", "--reuse", str(out), "--json", str(tmp_path / "again.json")])
    assert "measuring 1 size(s) (1 of them without their random init), reusing 1" in again.stdout
    second = {(r["depth"], r["width"]): r for r in json.loads((tmp_path / "again.json").read_text())["sizes"]}
    assert second[(2, 32)] == rows[(2, 32)] and second[(3, 48)]["init"] == "learned"
    assert second[(3, 48)]["weights_sha256"] != rows[(3, 48)]["weights_sha256"]

    # a retrained template (new cores, same architecture): every size is measured, its random init is reused
    with torch.no_grad():
        for core in reloaded.cores.values():
            core.mul_(1.01)
    reloaded.save_pretrained(template_dir)
    third = run([sys.executable, str(ROOT / "training" / "evaluate_template.py"), "--template", str(template_dir), "--linear-probe",
                 "--finetune-labels", "60", "--finetune-steps", "2", "--seeds", "0", "1", "--train-size", "300", "--test-size", "200",
                 "--reuse", str(tmp_path / "again.json"), "--json", str(tmp_path / "third.json")])
    # no --sizes: the sizes the folder stores, so 4x64 is measured with its random init
    assert "measuring 3 size(s) (2 of them without their random init), reusing 0" in third.stdout
    retrained = json.loads((tmp_path / "third.json").read_text())
    assert [(r["depth"], r["width"]) for r in retrained["sizes"]] == [(2, 32), (4, 64), (3, 48)]
    for row in retrained["sizes"]:
        size = (row["depth"], row["width"])
        if size not in second:
            assert 0 <= row["knn_random"] <= 100
            continue
        assert row["weights_sha256"] != second[size]["weights_sha256"]
        assert {k: v for k, v in row.items() if k.endswith("_random")} == \
            {k: v for k, v in second[size].items() if k.endswith("_random")}
        assert row["random_init_sha256"] == second[size]["random_init_sha256"]
    assert set(retrained["reused_from"]) == {"2x32 random init", "3x48 random init"}


def test_evaluate_template_rejects_a_bad_size_before_reading_data(template_dir):
    result = run([sys.executable, str(ROOT / "training" / "evaluate_template.py"), "--template", str(template_dir), "--sizes", "3x50"],
                 check=False)
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_knn_on_separable_features_is_perfect():
    from training.evaluate import knn_accuracy, linear_probe

    labels = torch.arange(4).repeat_interleave(25)
    feats = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(100, 4)
    assert knn_accuracy(feats, labels, feats, labels, k=5) == 100.0
    assert linear_probe(feats, labels, feats, labels, epochs=100) == 100.0


def test_poa_slicing_is_exact_for_the_full_size_and_extracts_subnetworks():
    from sweet_hub import SweetTemplate
    from training.poa import extract_vit, slice_state_dict

    model = SweetTemplate(head_dim=16, ranks=(8, 16, 16), vector_rank=4, anchors=[(4, 64)]).materialize(4, 64)
    state = model.state_dict()
    same = slice_state_dict(state, 4, 64)
    assert all(torch.equal(same[k], state[k]) for k in state)
    assert slice_state_dict(state, 5, 64) is None and slice_state_dict(state, 4, 80) is None
    sub = extract_vit(model, 2, 32, head_dim=16)
    assert (len(sub.blocks), sub.embed_dim, sub.blocks[0].attn.num_heads) == (2, 32, 2)
    torch.testing.assert_close(sub.blocks[1].attn.proj.weight, state["blocks.3.attn.proj.weight"][:32, :32] * 2)
    assert sub(torch.randn(1, 1, 28, 28)).shape == (1, 10)
