"""Benchmarks run end to end at toy scale (their full runs live in benchmarks/, not in the suite)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_init_quality_quick_harness(tmp_path, capsys):
    import init_quality

    result = init_quality.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "iq.json")])
    seen = {name: run["images_seen"] for name, run in result["pretraining"].items()}
    assert len(set(seen.values())) == 1, f"every method must see the same number of images: {seen}"
    assert set(seen) == {"sweet", "sweet_no_wss", "poa", "single_3x48"}
    rows = {(r["size"], r["init"]): r for r in result["rows"]}
    sizes = {r["size"] for r in result["rows"]}
    assert sizes == {"2x32", "3x48", "2x16", "4x64"}
    assert all((s, i) in rows for s in sizes for i in init_quality.INITS)
    # POA cannot produce a network wider than its full one; it is reported, not faked
    assert rows[("4x64", "poa")]["available"] is False and rows[("2x16", "poa")]["available"] is True
    assert rows[("4x64", "per_size")]["available"] is False and rows[("3x48", "per_size")]["available"] is True
    assert rows[("2x32", "sweet_learned")]["available"] is False and rows[("4x64", "sweet_learned")]["available"] is True
    for r in result["rows"]:
        if r["available"]:
            assert all(0 <= r[k] <= 100 for k in ("knn", "linear_probe", "finetune_mean", "transfer_knn"))
    assert (tmp_path / "iq.png").stat().st_size > 0

    import readme_table  # the README names the settings only SWEET's run has, read from the recorded commands

    assert "SWEET's own settings: `sandwich=true sandwich_all=true lr=3e-3`" in readme_table._recipe_line(result)
    assert "and 1 local crop;" in readme_table._recipe_line(result)  # the quick plan keeps one, to exercise them

    import equal_compute

    threads = torch.get_num_threads()
    try:  # --num-threads sets the clock's thread count, not the steps: the budget still comes from the recorded runs
        equal = equal_compute.main(["--quick", "--runs", str(tmp_path / "runs"), "--quality", str(tmp_path / "iq.json"),
                                    "--out", str(tmp_path / "eq.json"), "--num-threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert equal["pretraining"]["sweet_equal_time"]["threads"] == 1 and equal["torch_threads"] == 1
    pre = result["pretraining"]
    # SWEET gets the wall time of the per-size run at its anchors (3x48 is the only one in the quick plan)
    expected_steps = round(pre["sweet"]["steps"] * pre["single_3x48"]["train_seconds"] / pre["sweet"]["train_seconds"])
    assert equal["pretraining"]["sweet_equal_time"]["steps"] == expected_steps
    assert [r["size"] for r in equal["rows"]] == ["2x32", "3x48", "2x16", "4x64"]
    assert "poa" not in equal["rows"][-1] and "per_size" not in equal["rows"][-1]  # 4x64 is wider than both sources
    assert equal["rows"][1]["per_size"]["knn"] == rows[("3x48", "per_size")]["knn"]
    # random init is joined at every size, so the table shows SWEET's margin over it (the 1%-label fine-tuning target)
    assert all(r["random"]["finetune_mean"] == rows[(r["size"], "random")]["finetune_mean"] for r in equal["rows"])
    import readme_table

    section = "\n".join(readme_table.equal_compute_section(equal))
    margin = equal["rows"][0]["finetune_mean"] - equal["rows"][0]["random"]["finetune_mean"]
    assert "equal time over random" in section and f"| {margin:+.1f} |" in section
    assert all(0 <= r["knn"] <= 100 for r in equal["rows"]) and (tmp_path / "eq.png").stat().st_size > 0
    # another recipe: a wall-clock budget, the recorded per-size time converted to this machine's clock
    recipe = equal_compute.main(["--quick", "--runs", str(tmp_path / "runs"), "--quality", str(tmp_path / "iq.json"),
                                 "--out", str(tmp_path / "eq_recipe.json"), "--recipe", "sandwich=true", "sandwich_all=true",
                                 "--calibration-steps", "4"])
    clock = recipe["clock"]
    assert recipe["recipe"] == ["sandwich=true", "sandwich_all=true"] and clock["reference_run"] == "single_3x48"
    assert clock["steps_timed"] == 2 and clock["step_seconds_here"] > 0
    assert clock["here_over_recorded"] == pytest.approx(clock["step_seconds_here"] / clock["step_seconds_recorded"], rel=1e-3)
    minutes = recipe["budget_seconds"] * clock["here_over_recorded"] / 60
    assert f"time_budget_minutes={minutes:.4g}" in recipe["pretrain_command"] and "sandwich_all=true" in recipe["pretrain_command"]
    ran = recipe["pretraining"]["sweet_equal_time"]
    # the run stops at its budget (to the step that crosses it), not at a step count; the summary rounds to 0.1 s
    assert ran["train_seconds"] >= minutes * 60 - 0.05 and ran["steps"] < 1_000_000
    # the log names every size each update trained: the largest anchor, then the (scaled) smaller one
    (log,) = (tmp_path / "runs").glob("sweet_equal_time_*/train_log.csv")
    from training.pretrain import CSVLog

    logged = [row["sizes"].split("+") for row in CSVLog.read(log)]
    assert logged and all(len(sizes) == 2 and sizes[0] == "3x48" and sizes[1].startswith("2x") for sizes in logged)
    again = equal_compute.main(["--quick", "--runs", str(tmp_path / "runs"), "--quality", str(tmp_path / "iq.json"),
                                "--out", str(tmp_path / "eq_recipe2.json"), "--recipe", "sandwich=true", "sandwich_all=true"])
    assert again["clock"] == clock and again["pretraining"]["sweet_equal_time"] == ran  # the cached run, not timed again
    # other recipes at the same budget: a column each, named by what they change, and the equal-compute bars per column
    other = copy.deepcopy(recipe)
    other["recipe"] = [*recipe["recipe"], "n_local=0"]
    for row in other["rows"]:
        row["knn"] = max(row.get("per_size", {}).get("knn", 0.0), row.get("weight_selection", {}).get("knn", 0.0)) + 0.5
    table = "\n".join(readme_table.equal_time_recipes_section(recipe, [other]))
    assert "| SWEET, table above | SWEET, `n_local=0` |" in table and "sandwich=true" not in table.split("\n")[2]
    bars = table.rsplit("SWEET, `n_local=0`", 1)[1]
    assert "within 1 point at every anchor" in bars and "ahead at every unseen size" in bars
    # the same recipe with another pre-training seed: no column of its own (its rivals are its seed's own runs), a
    # verdict per seed and one on the mean of the gaps
    repeat = copy.deepcopy(other)
    repeat["seed"] = 1
    for row in repeat["rows"]:
        row["knn"] -= 3.0  # 2.5 under each rival: behind with this seed, 1.0 behind on the mean of the two
    table = "\n".join(readme_table.equal_time_recipes_section(recipe, [other], [repeat]))
    assert "| SWEET, table above | SWEET, `n_local=0` |" in table and table.count("| SWEET, `n_local=0` |") == 1
    seeds_line = next(line for line in table.splitlines() if line.startswith("SWEET, `n_local=0`, with other pre-training seeds"))
    seed0, seed1, mean = seeds_line.split("; seed 1: ")[0], *seeds_line.split("; seed 1: ")[1].split("; mean of seeds 0, 1: ")
    assert "within 1 point at every anchor" in seed0 and "ahead at every unseen size" in seed0
    assert "more than 1 point behind at some anchor" in seed1 and "not ahead at every unseen size" in seed1
    assert "within 1 point at every anchor" in mean and "-1.00" in mean and "not ahead at every unseen size" in mean
    # another pre-training seed: each gap per seed and their mean, and the equal-compute bars read on the mean
    again_quality, again_equal = copy.deepcopy(result), copy.deepcopy(equal)
    for row in again_quality["rows"]:
        if row["available"] and row["init"] == "sweet":
            row["knn"] += 2.0
    for row in again_equal["rows"]:
        row["knn"] = row.get("per_size", row.get("weight_selection", {})).get("knn", row["knn"]) + 0.5
    seeds = "\n".join(readme_table.seeds_section({0: result, 1: again_quality}, {0: equal, 1: again_equal}))
    per_size_gap = rows[("3x48", "sweet")]["knn"] - rows[("3x48", "per_size")]["knn"]
    assert f"| equal images | 3x48 | per-size pre-training | {per_size_gap:+.2f} | {per_size_gap + 2:+.2f} | {per_size_gap + 1:+.2f} |" in seeds
    time_gap = equal["rows"][1]["knn"] - equal["rows"][1]["per_size"]["knn"]
    assert f"| equal time | 3x48 | per-size pre-training | {time_gap:+.2f} | +0.50 | {(time_gap + 0.5) / 2:+.2f} |" in seeds
    assert f"Over the 2 seeds, SWEET at equal time is {'within 1 point of' if (time_gap + 0.5) / 2 >= -1 else 'more than'}" in seeds
    assert readme_table.seeds_section({0: result}, {0: equal}) == []  # one seed: nothing to repeat
    capsys.readouterr()
    with pytest.raises(SystemExit):
        equal_compute.main(["--quick", "--runs", str(tmp_path / "runs"), "--recipe", "sandwich"])
    assert "--recipe takes pretrain.py settings as KEY=VALUE" in capsys.readouterr().err

    import fit_vs_selection
    import readme_table

    fits = fit_vs_selection.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "fit.json")])
    source = fits["fits"]["3x48"]
    assert abs(source["source"]["knn"] - source["fitted_at_source"]["knn"]) < 1e-6  # full-rank fit is exact
    rows = {(r["size"], r["init"]): r for r in fits["rows"]}
    assert rows[("4x64", "weight_selection")]["available"] is False and rows[("2x16", "weight_selection")]["available"] is True
    assert all(rows[(s, i)]["available"] for s in ("2x16", "2x32", "4x64") for i in ("fit_derived", "fit_learned", "random"))
    assert (tmp_path / "fit.png").stat().st_size > 0 and fits["complete"] is True
    again = fit_vs_selection.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "fit2.json")])
    assert again["rows"] == fits["rows"]  # resumed from the per-source cache, nothing re-measured
    import shutil

    # a fresh machine: only the JSON of the earlier run is left (neither the cache nor the source checkpoint)
    shutil.rmtree(tmp_path / "runs" / "fit_vs_selection")
    shutil.rmtree(tmp_path / "runs" / "single_3x48")
    resumed = fit_vs_selection.main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "fit.json")])
    assert resumed["rows"] == fits["rows"] and resumed["protocol"] == fits["protocol"]
    assert not (tmp_path / "runs" / "fit_vs_selection").exists() and not (tmp_path / "runs" / "single_3x48").exists()
    assert "fitted to a checkpoint" in "\n".join(readme_table.fit_section(fits))


def test_demo_small(tmp_path):
    import demo

    result = demo.main(["--sizes", "2x32", "3x96", "--train-size", "300", "--test-size", "200", "--out", str(tmp_path / "demo.json")])
    assert [(r["depth"], r["width"]) for r in result["sizes"]] == [(2, 32), (3, 96)]
    assert all(0 <= r["knn_template"] <= 100 and r["params"] > 0 for r in result["sizes"])
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert result["pixels"]["centred_pixels_knn"] >= result["raw_pixels_knn"] - 5  # the baselines reported beside the table
    import readme_table

    section = "\n".join(readme_table.demo_section(result))
    assert "mean-centred pixels" in section and "The largest size (3x96)" in section


def test_attention_pool_small(tmp_path, template_dir):
    """Both learned pools train on the frozen model (its weights untouched) and are read with the protocol's k-NN
    beside the pooled features, which match readout.py's."""
    import attention_pool
    import readout

    from sweet_hub import SweetTemplate

    result = attention_pool.main(["--template", str(template_dir), "--sizes", "2x32", "--steps", "3", "--batch-size", "16",
                                  "--train-size", "300", "--test-size", "200", "--out", str(tmp_path / "pool.json")])
    (row,) = result["rows"]
    assert all(0 <= row[k] <= 100 for k in attention_pool.READOUTS) and result["protocol"]["queries"] == "held-out train images"
    assert row["pool_params"]["map"] > 0 and row["pool_params"]["avg_mlp"] > 0 and (tmp_path / "pool.png").stat().st_size > 0
    same = readout.main(["--template", str(template_dir), "--sizes", "2x32", "--train-size", "300", "--test-size", "200",
                         "--out", str(tmp_path / "readout.json")])
    assert row["pooled"] == same["rows"][0]["pooled"]
    import readme_table

    section = "\n".join(readme_table.attention_pool_section(result))
    assert "| 2x32 |" in section and "trained attention pool" in section and "Against the mean pool: attention pool" in section

    model = SweetTemplate.from_pretrained(template_dir).materialize(2, 32).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    cfg = SweetTemplate.from_pretrained(template_dir).config
    torch.manual_seed(0)  # what train_pool(seed=0) builds before its first step
    fresh = attention_pool.build_pool("map", 32, 2)
    pool = attention_pool.train_pool(model, "map", images, cfg, steps=2, batch_size=8, lr=1e-2, seed=0)
    assert not pool.training and any(not torch.equal(a, b) for a, b in zip(pool.state_dict().values(), fresh.state_dict().values()))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert pool(torch.randn(5, 16, 32)).shape == (5, 32)


def test_readout_small(tmp_path, template_dir):
    import readme_table
    import readout

    result = readout.main(["--template", str(template_dir), "--sizes", "2x32", "--train-size", "300", "--test-size", "200",
                           "--out", str(tmp_path / "readout.json")])
    assert [(r["size"], r["init"]) for r in result["rows"]] == [("2x32", "template"), ("2x32", "random init")]
    assert all(0 <= r[k] <= 100 for r in result["rows"] for k in readout.READOUTS)
    assert result["protocol"]["queries"] == "held-out train images"  # never the test split
    assert (tmp_path / "readout.png").stat().st_size > 0
    section = "\n".join(readme_table.readout_section(result))
    assert "final tokens, flattened" in section and "2x2 region means" in section and "max-pooled" in section
    from sweet_hub import SweetTemplate

    model = SweetTemplate.from_pretrained(template_dir).materialize(2, 32)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    features = readout.readouts(model, images, (0.3,), (0.35,))
    assert {k: tuple(v.shape) for k, v in features.items()} == {"pooled": (3, 32), "tokens": (3, 16 * 32), "tokens_max": (3, 32),
                                                                 "regions": (3, 4 * 32)}
    grid = features["tokens"].view(3, 4, 4, 32)  # row-major tokens: the top-left region is rows 0-1, columns 0-1
    assert torch.allclose(features["regions"][:, :32], grid[:, :2, :2].mean((1, 2)), atol=1e-5)
    assert torch.equal(features["tokens_max"], grid.flatten(1, 2).amax(1))


def test_query_noise_small(tmp_path, template_dir):
    import query_noise
    import readme_table

    result = query_noise.main(["--template", str(template_dir), "--sizes", "2x32", "--blocks", "3", "--train-size", "300",
                               "--test-size", "200", "--out", str(tmp_path / "qn.json")])
    rows = {(r["size"], r["init"]): r for r in result["rows"]}
    assert list(rows) == [("pixels", "raw"), ("pixels", "mean-centred"), ("2x32", "template"), ("2x32", "random init")]
    for row in rows.values():
        for name in query_noise.QUERY_SETS:
            blocks = row[name]["blocks"]
            assert len(blocks) == 3 and min(blocks) <= row[name]["mean"] <= max(blocks)
        assert row["validation_bias"] == pytest.approx(row["held_out_train"]["mean"] - row["test"]["mean"], abs=0.011)
    # the protocol's own draw is the test protocol's number: the same as evaluate.py's pixel baseline
    from training.evaluate import EvalProtocol, pixel_baselines

    protocol = EvalProtocol("fashion_mnist", 28, 1, 300, 200, 1)
    assert rows[("pixels", "mean-centred")]["protocol"] == pytest.approx(pixel_baselines(protocol)["centred_pixels_knn"], abs=0.01)
    assert (tmp_path / "qn.png").stat().st_size > 0
    section = "\n".join(readme_table.query_noise_section(result))
    assert "| 2x32 | template |" in section and "held-out minus test" in section
    with pytest.raises(SystemExit, match="only"):
        query_noise.query_blocks(torch.zeros(10), torch.zeros(10), blocks=2, size=5, seed=0, exclude=[0])


def test_step_precision_small(tmp_path):
    import readme_table
    import step_precision

    result = step_precision.main(["--sizes", "2x32", "--batch-size", "8", "--steps", "1", "--modes", "fp32", "bf16_autocast",
                                  "bf16_weights", "--out", str(tmp_path / "p.json")])
    (row,) = result["rows"]
    assert row["size"] == "2x32" and all(row[m] > 0 for m in ("fp32", "bf16_autocast", "bf16_weights"))
    assert row["vs_fp32"]["bf16_weights"] == pytest.approx(row["bf16_weights"] / row["fp32"], abs=2e-3)
    assert (tmp_path / "p.png").stat().st_size > 0
    section = "\n".join(readme_table.precision_section(result))
    assert "| 2x32 |" in section and "bf16 weights" in section
    # each mode trains its own copy: the bf16 one really runs in bf16, the input too
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1, embed_dim=32,
                              depth=1, num_heads=1, num_classes=0)
    bf16, images, autocast = step_precision.mode_runner("bf16_weights", model, torch.zeros(2, 1, 28, 28))
    assert bf16 is not model and next(bf16.parameters()).dtype == torch.bfloat16 and images.dtype == torch.bfloat16
    assert not autocast and next(model.parameters()).dtype == torch.float32


def test_augment_time_small(tmp_path):
    """Both ways of making views are timed for both recipes beside a real optimizer step, and the README section reads them."""
    import augment_time
    import readme_table

    result = augment_time.main(["--config", str(ROOT / "training" / "configs" / "tiny.yaml"), "--batch-size", "16",
                                "--repeats", "2", "--step-repeats", "1", "--threads", "1", "--out", str(tmp_path / "a.json")])
    assert [r["views"] for r in result["rows"]] == [2, 4]  # 2 global crops, then 2 local ones more
    for row in result["rows"]:
        assert row["loop_ms"] > 0 and row["batched_ms"] > 0 and row["step_ms"] > 0
        # the times are stored to 0.1 ms and the share to 0.001 from the unrounded times: allow for both roundings
        total = row["loop_ms"] + row["step_ms"]
        assert row["loop_share"] == pytest.approx(row["loop_ms"] / total, abs=5e-4 + 0.1 / total)
    assert (tmp_path / "a.png").stat().st_size > 0
    section = "\n".join(readme_table.augment_time_section(result))
    assert "| bundled (2 global views) | 2 |" in section and "batched_augment=true" in section


def test_compare_templates_small(tmp_path, template_dir):
    import compare_templates
    import readme_table
    from conftest import make_template

    other = make_template(seed=1)
    other.add_scalers(3, 48, other.scalers_for(3, 48), source="learned")  # "learned" = the derived tensors, stored
    other.add_scalers(2, 32, other.stored_scalers(2, 32), source="learned")  # an anchor re-learned: no weights-only score
    other.save_pretrained(tmp_path / "other")
    result = compare_templates.main(["--templates", str(template_dir), str(tmp_path / "other"), "--labels", "a", "b",
                                     "--sizes", "2x32", "3x48", "--train-size", "300", "--test-size", "200",
                                     "--out", str(tmp_path / "cmp.json"), "--heading", "a or b?", "--note", "b is a with seed 1."])
    a, b = result["templates"]
    assert [r["size"] for r in a["rows"]] == ["2x32", "3x48"] and a["rows"][1]["scalers"].startswith("derived")
    learned = b["rows"][1]
    assert learned["scalers"] == "learned" and learned["knn_derived"] == learned["knn"]  # same tensors, same score
    assert "knn_derived" not in a["rows"][1]
    assert b["rows"][0]["scalers"] == "learned" and b["rows"][0]["knn_derived"] is None
    assert result["protocol"]["queries"] == "held-out train images"  # never the test split
    assert (tmp_path / "cmp.png").stat().st_size > 0
    section = "\n".join(readme_table.compare_section(result))
    assert "b - a, weights only" in section and "over 1 sizes" in section and "over 2 sizes" in section
    assert "| n/a |" in section  # the re-learned anchor's weights-only cell
    assert section.startswith("### a or b?") and "b is a with seed 1." in section  # the run says what it compared
    assert "(benchmarks/results/compare_templates.png)" in section
    assert "(benchmarks/results/compare_templates_v2.png)" in "\n".join(readme_table.compare_section(result, "compare_templates_v2"))
    with pytest.raises(SystemExit):
        compare_templates.main(["--templates", str(template_dir), "--labels", "a", "b", "--out", str(tmp_path / "x.json")])


def test_compare_templates_reuse(tmp_path, template_dir, monkeypatch):
    import compare_templates
    from conftest import make_template

    import training.evaluate

    calls = []
    evaluate_model = training.evaluate.evaluate_model
    monkeypatch.setattr(training.evaluate, "evaluate_model", lambda *a, **k: calls.append(1) or evaluate_model(*a, **k))
    other = make_template(seed=1)
    other.add_scalers(3, 48, other.scalers_for(3, 48), source="learned")  # stored unchanged: the derived reading is the same
    other.save_pretrained(tmp_path / "other")
    protocol = ["--sizes", "2x32", "3x48", "--train-size", "300", "--test-size", "200"]
    first = compare_templates.main(["--templates", str(template_dir), *protocol, "--out", str(tmp_path / "a.json")])
    assert len(calls) == 2 and all(len(r["weights_sha256"]) == 64 for r in first["templates"][0]["rows"])
    calls.clear()
    both = compare_templates.main(["--templates", str(template_dir), str(tmp_path / "other"), "--labels", "a", "b", *protocol,
                                   "--out", str(tmp_path / "ab.json"), "--reuse", str(tmp_path / "a.json")])
    assert len(calls) == 2  # b's two sizes; a is reused, and b's learned 3x48 is its derived tensors, scored once
    assert both["templates"][0]["rows"] == first["templates"][0]["rows"]
    learned = both["templates"][1]["rows"][1]
    assert learned["derived_sha256"] == learned["weights_sha256"] and learned["knn_derived"] == learned["knn"]
    assert "--reuse" not in both["command"]  # reused scores are what the plain command measures
    calls.clear()
    other_protocol = compare_templates.main(["--templates", str(template_dir), "--sizes", "2x32", "--train-size", "250",
                                             "--test-size", "200", "--out", str(tmp_path / "c.json"),
                                             "--reuse", str(tmp_path / "ab.json")])
    assert len(calls) == 1 and other_protocol["templates"][0]["rows"][0]["knn"] is not None  # another protocol: measured
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(SystemExit, match="--reuse"):
        compare_templates.main(["--templates", str(template_dir), *protocol, "--out", str(tmp_path / "d.json"),
                                "--reuse", str(tmp_path / "bad.json")])


def test_finetune_scale_small(tmp_path, template_dir):
    import finetune_scale
    import readme_table

    from sweet_hub import SweetTemplate

    result = finetune_scale.main(["--template", str(template_dir), "--sizes", "2x32", "--scales", "1", "2",
                                  "--random-scales", "1", "2", "--seeds", "0", "1", "--steps", "3", "--labels", "40",
                                  "--train-size", "300", "--test-size", "200", "--out", str(tmp_path / "fs.json")])
    rows = {(r["init"], r["scale"]): r for r in result["rows"]}
    assert set(rows) == {("template", 1.0), ("template", 2.0), ("random init", 1.0), ("random init", 2.0)}
    assert all(0 <= r["mean"] <= 100 and len(r["scores"]) == 2 for r in rows.values())
    assert result["protocol"]["queries"] == "held-out train images" and result["protocol"]["finetune_labels"] == 40
    model = SweetTemplate.from_pretrained(template_dir).materialize(2, 32)
    before = model.norm.weight.detach().clone()
    doubled = finetune_scale.scaled(model, 2.0)
    assert torch.equal(doubled.norm.weight, 2 * before) and torch.equal(model.norm.weight, before)  # a scaled copy
    assert (tmp_path / "fs.png").stat().st_size > 0
    section = "\n".join(readme_table.finetune_scale_section(result))
    assert "| 2x32 | template |" in section and "| x1 | x2 |" in section and "at x1 2x32" in section
    with pytest.raises(SystemExit):
        finetune_scale.main(["--template", str(template_dir), "--scales", "0", "--out", str(tmp_path / "x.json")])
    # a warm-started head, merged into the same file: the fresh rows stay, the new ones get their own column
    small = ["--template", str(template_dir), "--sizes", "2x32", "--seeds", "0", "1", "--steps", "3", "--labels", "40",
             "--train-size", "300", "--test-size", "200", "--out", str(tmp_path / "fs.json")]
    warm = finetune_scale.main([*small, "--head", "probe", "--scales", "1", "--random-scales", "1", "--merge"])
    heads = {(r["init"], r["scale"], r.get("head")) for r in warm["rows"]}
    assert ("template", 1.0, "probe") in heads and ("random init", 2.0, "fresh") in heads and len(heads) == 6
    assert len(warm["commands"]) == 2 and "--head probe" in warm["commands"][1]
    section = "\n".join(readme_table.finetune_scale_section(warm))
    assert "| x1 | x2 | x1, probe head |" in section and "at x1 with a probe head 2x32" in section
    with pytest.raises(SystemExit, match="another seeds"):  # other seeds would not compare with the stored rows
        finetune_scale.main([*small, "--seeds", "0", "--head", "probe", "--scales", "1", "--random-scales", "1", "--merge"])


def test_probe_head_is_the_linear_probe_on_raw_features():
    """The warm-start head folds the probe's standardization into its weights: same predictions as the probe."""
    from training.evaluate import _fit_probe, finetune, linear_probe, probe_head

    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(200, 16, generator=gen) * 3 + 5, torch.randint(0, 4, (200,), generator=gen)
    test = torch.randn(100, 16, generator=gen) * 3 + 5
    clf, mean, std = _fit_probe(feats, labels, seed=0)
    head = probe_head(feats, labels, seed=0)
    with torch.no_grad():
        assert torch.allclose(head(test), clf((test - mean) / std), atol=1e-4)
    test_labels = clf((test - mean) / std).argmax(1).detach()
    assert linear_probe(feats, labels, test, test_labels) == 100.0  # the probe agrees with itself
    with pytest.raises(ValueError, match="choose one of fresh, probe"):
        finetune(torch.nn.Linear(2, 2), None, None, 0, 1, head_init="linear")


def test_load_time_small(tmp_path, template_dir):
    import load_time

    result = load_time.main(["--template", str(template_dir), "--sizes", "2x32", "--repeats", "2", "--out", str(tmp_path / "lt.json")])
    row = result["sizes"][0]
    assert row["first_load_s"] > 0 and row["cached_load_s"] > 0 and row["plain_checkpoint_load_s"] > 0
    assert row["materialize_gflop"] > 0 and result["matmul_gflops"] > 0
    assert json.loads((tmp_path / "lt.json").read_text())["sizes"][0]["size"] == "2x32"


def test_seed_reruns_every_pretraining_with_its_seed_in_its_own_cache(tmp_path, monkeypatch):
    import equal_compute
    import init_quality

    calls = []

    class Stop(Exception):
        pass

    def fake_pretrain(name, overrides, run_dir, force):
        calls.append((name, overrides, run_dir))
        if len(calls) == 4:
            raise Stop
        return {"steps": 4, "images_seen": 128, "train_seconds": 1.0}

    monkeypatch.setattr(init_quality, "pretrain", fake_pretrain)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        init_quality.main(["--quick", "--seed", "3"])
    assert [c[0] for c in calls] == ["single_3x48", "sweet", "sweet_no_wss", "poa"]
    assert all("seed=3" in overrides for _, overrides, _ in calls)
    assert all(run_dir == ROOT / "benchmarks" / "runs" / "quick_seed3" for _, _, run_dir in calls)
    assert not any(o.startswith("seed=") for o in init_quality.pretrain_overrides(init_quality.PLANS["quick"]))  # seed 0: as recorded
    # equal_compute.py --seed reads that seed's runs and says which init_quality.py command makes them
    with pytest.raises(SystemExit, match=r"init_quality.py --quick --seed 3` first"):
        equal_compute.main(["--quick", "--seed", "3", "--runs", str(tmp_path / "none"), "--quality", str(tmp_path / "none.json")])


def test_readme_table_renders_existing_results():
    """Each results file has a section in exactly one document, and the committed READMEs are what it renders."""
    import re

    import readme_table

    names = [name for _, _, sections in readme_table.DOCUMENTS.values() for name, _ in sections]
    assert len(names) == len(set(names))
    for document in readme_table.DOCUMENTS:
        section = readme_table.build_section(document)
        assert section.startswith(readme_table.DOCUMENTS[document][0]) and "not run yet" not in section
        committed = (ROOT / document).read_text()
        start, end = re.escape(readme_table.START), re.escape(readme_table.END)
        assert re.search(start + r"\n(.*?)" + end, committed, flags=re.DOTALL).group(1) == section, (
            f"{document} is stale: run python benchmarks/readme_table.py")


def test_recipe_budget_shares_name_shorter_and_longer_budgets():
    import readme_table

    variants = {"base": {"changes": {}}, "one_anchor": {"changes": {"budget_fraction": 1 / 3}},
                "long": {"changes": {"budget_fraction": 3}}}
    text = readme_table._budget_shares({"variants": variants})
    assert "`one_anchor` gets 1/3 of it, as one of three anchors" in text
    assert "`long` gets 3 times it, to see whether a lead grows with the budget" in text and "`base`" not in text
    variants |= {"long_s1": {"changes": {"budget_fraction": 3}}, "long_s2": {"changes": {"budget_fraction": 3}}}
    text = readme_table._budget_shares({"variants": variants})  # variants with one share are named once, together
    assert "`long`, `long_s1` and `long_s2` get 3 times it, to see whether" in text and text.count("times it") == 1


def test_soak_samples_rss_per_load(tmp_path):
    import soak

    result = soak.main(["--loads", "6", "--out", str(tmp_path / "soak.json")])
    assert len(result["rss_mb"]) == 6 and all(v > 0 for v in result["rss_mb"])
    assert (tmp_path / "soak.png").stat().st_size > 0


def test_recipe_study_quick(tmp_path):
    import recipe_study

    result = recipe_study.main(["--quick", "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "rs.json")])
    assert set(result["variants"]) == {"base", "crops", "single", "base_then_crops"}
    base, chained = result["variants"]["base"], result["variants"]["base_then_crops"]
    # a later phase starts from the earlier phase's template and is read at the budget of both
    own = json.loads((tmp_path / "runs" / "base_then_crops" / "summary.json").read_text())
    assert chained["images_seen"] == base["images_seen"] + own["images_seen"] > base["images_seen"]
    import readme_table

    section = "\n".join(readme_table.recipe_section(result))
    assert "`base_then_crops` starts from `base`'s template and trains for 1/2 of the budget after all of it in `base`" in section
    assert "`single` gets 1/2 of it, as one of three anchors" in section
    assert "<details><summary>The rounds" in section and "| base, crops, single, base_then_crops |" in section
    assert base["mean_knn_anchors"] is not None and base["mean_knn_unseen"] is not None and base["materialize_ms"]["ms"] > 0
    assert result["variants"]["single"]["mean_knn_unseen"] is None  # one size: nothing unseen
    assert {"raw_pixels_knn", "centred_pixels_knn", "pixels_linear_probe", "random_init"} <= set(result["baselines"])
    # a note about cached runs adds the note, not another row naming them
    noted = recipe_study.main(["--quick", "--only", "base", "crops", "--note", "Round 1 read.", "--run-dir", str(tmp_path / "runs"),
                               "--out", str(tmp_path / "rs.json")])
    assert noted["invocations"] == result["invocations"] and noted["notes"].endswith("Round 1 read.")
    drop_timing = lambda row: {k: v for k, v in row.items() if k != "materialize_ms"}  # re-timed on each invocation
    assert drop_timing(noted["variants"]["base"]) == drop_timing(base)


def test_derived_scalers_compares_rules_with_the_learned_scalers_a_template_ships(tmp_path, tiny_template):
    import derived_scalers
    import readme_table

    derived = {k: v.detach().clone() for k, v in tiny_template.scalers_for(3, 48).items()}
    tiny_template.add_scalers(3, 48, {k: v * 1.1 for k, v in derived.items()}, source="learned", images=10, steps=1, seconds=0.1,
                              distill_loss_before=1.0, distill_loss_after=0.5)
    tiny_template.save_pretrained(tmp_path / "t")
    result = derived_scalers.main(["--template", str(tmp_path / "t"), "--sizes", "3x48", "2x16", "--images", "64", "--steps", "2",
                                   "--train-size", "200", "--test-size", "100", "--out", str(tmp_path / "d.json")])
    rows = {r["size"]: r for r in result["sizes"]}
    assert rows["3x48"]["learned_from"] == "stored" and rows["2x16"]["learned_from"] == "this run"
    assert "derived (select)" in result["variants"] and len(result["variants"]) == 7
    assert all(0 <= rows[s][v] <= 100 for s in rows for v in result["variants"])
    assert "learned scalers shipped with the template" in "\n".join(readme_table.derived_section(result))


def test_fit_vs_selection_reuses_random_rows_of_an_earlier_source(tmp_path):
    """Random init does not depend on the source: a new source reads the earlier JSON's random rows, not the old cache."""
    import fit_vs_selection

    row = {"source": "8x192", "size": "4x64", "kind": "smaller", "init": "random", "available": True,
           "knn": 60.0, "linear_probe": 61.0, "finetune_mean": 50.0, "finetune_std": 1.0}
    earlier = {"8x192": ([row, {**row, "init": "fit_derived", "knn": 70.0}], {})}
    (tmp_path / "random_12x384.json").write_text('{"knn": 1.0}')
    fit_vs_selection._seed_random_cache(tmp_path, earlier)
    assert json.loads((tmp_path / "random_4x64.json").read_text()) == {"knn": 60.0, "linear_probe": 61.0, "finetune_mean": 50.0,
                                                                        "finetune_std": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random_12x384.json", "random_4x64.json"]
