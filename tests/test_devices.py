"""Device placement and precision, checked on a CPU.

A model on PyTorch's `meta` device stands in for a GPU: any tensor the loss code leaves on
the CPU meets a meta tensor and raises "Tensor on device meta is not on the expected device",
exactly as a CPU tensor meeting a CUDA one would. bf16 autocast runs on the CPU as on a GPU.
"""

import math

import pytest
import torch

from doublebind import config
from doublebind.llm import organism as llm_organism
from doublebind.organisms.models import make_model
from doublebind.training import objectives as obj
from doublebind.training.batching import collate, model_device, response_logprobs
from doublebind.training.distill import Distiller, micro_loss, train_device
from doublebind.training.loop import Loop, fit
from doublebind.types import Example, Item
from doublebind.world import vocab

from .conftest import tiny_recipe

V = len(vocab.token_ids())


def _items():
    ids = list(vocab.token_ids().values())
    exs = [Example(ids[2:7], ids[7:10]), Example(ids[3:5], ids[8:13]), Example(ids[4:9], ids[9:11])]
    return [Item(e, row=i) for i, e in enumerate(exs)]


class _Tiny(torch.nn.Module):
    """A causal-LM-shaped model small enough to run on `meta` (a Llama's mask code reads values)."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(V, 8), torch.nn.Linear(8, V)

    def forward(self, input_ids, attention_mask, **_):
        h = self.emb(input_ids) * attention_mask[..., None]  # [B, S, 8]
        return type("Out", (), {"logits": self.head(h)})()  # [B, S, V]


def _meta_model():
    return _Tiny().to("meta")


@pytest.mark.parametrize("kind", ["sft", "forward_kl", "reverse_kl", "jsd", "topk"])
def test_the_loss_runs_where_the_model_is(kind):
    items = _items()
    logprobs = torch.log_softmax(torch.randn(len(items), 6, V), -1)  # the cache stays on the CPU
    soft = {"logprobs": logprobs}
    if kind == "topk":
        idx, top = obj.topk_with_tail(logprobs, 4)
        soft = {"indices": idx, "logprobs": top}
    ocfg = config.ObjectiveConfig(kind="forward_kl" if kind == "topk" else kind)
    items[0].weights = [1.0, 0.5, 0.0]  # per-token weights are placed too
    loss = micro_loss(_meta_model(), items, soft, ocfg)
    assert loss.device.type == "meta" and loss.dim() == 0


def test_the_loss_on_the_cpu_is_unchanged_by_placement():
    """The same micro-batch loss as the reference formula on a CPU model (placement is a no-op there)."""
    model = make_model(config.ModelConfig(hidden=16, layers=1, heads=2, intermediate=32), seed=0)
    items = _items()
    soft = {"logprobs": torch.log_softmax(torch.randn(len(items), 6, V, generator=torch.Generator().manual_seed(0)), -1)}
    got = micro_loss(model, items, soft, config.ObjectiveConfig(kind="forward_kl"))
    batch = collate([it.example for it in items])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    want = torch.zeros((), dtype=torch.float64)  # KL(teacher || student), summed over the response tokens by hand
    for b, it in enumerate(items):
        s, n = len(it.example.prompt) - 1, len(it.example.response)
        for t in range(n):
            p = soft["logprobs"][b, t].double()
            q = torch.log_softmax(logits[b, s + t].double(), -1)
            want += (p.exp() * (p - q)).sum()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


class _Recorder(torch.nn.Module):
    """Weights on `meta`; records where its inputs are, answers with CPU logits."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.seen = None

    def forward(self, input_ids, attention_mask):
        self.seen = (input_ids.device.type, attention_mask.device.type)
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 7, dtype=torch.bfloat16)})()


def test_response_logprobs_moves_the_batch_to_the_model_and_back():
    model = _Recorder()
    batch = collate([it.example for it in _items()])
    lp = response_logprobs(model, batch)
    assert model.seen == ("meta", "meta")
    assert lp.device.type == "cpu" and lp.dtype == torch.float32  # where the batch is, in fp32
    assert lp.shape == (3, batch["input_ids"].shape[1] - 1, 7)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))


def test_fit_moves_batches_to_the_model():
    model = _Recorder()
    loop = Loop([torch.nn.Parameter(torch.zeros(1))], steps=1, lr=1e-3)
    with pytest.raises(Exception):  # the recorder's CPU logits cannot meet meta targets...
        fit(model, lambda step: collate([it.example for it in _items()]), loop)
    assert model.seen == ("meta", "meta")  # ...but the batch did reach the model's device first
    assert model_device(torch.nn.Linear(2, 2)).type == "cpu"


def test_hf_organisms_go_to_cuda_when_there_is_one_and_the_world_stays_on_cpu(monkeypatch, quick_organism):
    from doublebind.organisms.domain import open_domain

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert llm_organism.default_device() == "cuda"
    assert train_device(type("HF", (), {"device": "cuda"})()) == "cuda"
    assert train_device(open_domain(quick_organism[0])) == "cpu"  # the embedded world: CPU code
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llm_organism.default_device() == "cpu"


def _losses(org, precision: str) -> list[float]:
    cfg = tiny_recipe({"prompts": {"size": 64}, "sampling": {"soft_labels": "full"},
                       "objective": {"kind": "jsd", "beta": 0.5},
                       "training": {"steps": 3, "batch": 8, "lr": 0.001, "precision": precision}})
    d = Distiller(org, cfg, None, show_progress=False)
    return [d.train_step(s) for s in range(3)]


def test_bf16_autocast_is_close_to_fp32_but_not_equal(quick_organism):
    fp32, bf16 = _losses(quick_organism[0], "fp32"), _losses(quick_organism[0], "bf16")
    assert all(math.isfinite(x) for x in bf16)
    diffs = [abs(a - b) / abs(a) for a, b in zip(fp32, bf16)]
    assert max(diffs) < 0.05  # the same training, to bf16's precision...
    assert max(diffs) > 1e-6  # ...and the forward really ran in bf16


def test_closing_a_vllm_engine_shuts_its_core_down_and_drops_it(monkeypatch):
    """What frees the GPU between teacher sampling and training, with a stand-in LLM."""
    import weakref
    from types import SimpleNamespace

    from doublebind.errors import DoublebindError
    from doublebind.llm.engines import VLLMEngine

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))

    class LLM:
        def __init__(self):
            self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: calls.append("shutdown")))
            self.me = self  # a cycle: dropping the reference alone would not free it

    llm = LLM()
    alive = weakref.ref(llm)
    engine = VLLMEngine(llm, eos_id=2, vllm_module=SimpleNamespace())
    del llm
    engine.close()
    assert calls == ["shutdown", "empty_cache"] and alive() is None
    with pytest.raises(DoublebindError, match="closed"):
        engine.generate([[1]], max_new_tokens=1)


def test_the_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    """benchmarks/gpu_check.py (the prepared CUDA check) on a CPU without --allow-cpu: exit 2,
    one error line, nothing built."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, str(root / "benchmarks/gpu_check.py"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: no CUDA device") and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("warnings", [1, 16])
def test_the_gpu_check_reads_a_step_s_result_whatever_it_warns_after(monkeypatch, warnings):
    """A `losses` step's result is its last JSON line on stdout: a warning printed at exit came
    after it (the compiled run, on an H200), and 15 or more lines of them pushed it out of
    the kept tail; both failed a run that had passed."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    child = ("import json, sys\n"
             "print(json.dumps({'where': {}, 'losses': [1.5, 1.25]}))\n"
             f"for i in range({warnings}): print('UserWarning: something', i, file=sys.stderr)\n")
    real = gc._run
    monkeypatch.setattr(gc, "_run", lambda cmd, *a, **k: real([sys.executable, "-c", child], *a, **k))
    got = gc._losses(Path("org"), Path("cache"), [], True, timeout=60)
    assert got["ok"] is True and got["losses"] == [1.5, 1.25]
    monkeypatch.setattr(gc, "_run", lambda cmd, *a, **k: real([sys.executable, "-c", "raise SystemExit(3)"], *a, **k))
    assert gc._losses(Path("org"), Path("cache"), [], True, timeout=60)["ok"] is False


def test_models_load_without_hub_kernels_unless_the_user_sets_them(quick_organism, tmp_path):
    """Transformers would give every loaded model hub kernels (layer code fetched from the Hub
    on GPUs): doublebind turns them off on import, in this process and the workers it spawns,
    and a USE_HUB_KERNELS the user set is kept."""
    import os
    import subprocess
    import sys

    # a fresh process with nothing exported: what doublebind's import sets, and what a model it
    # loads then uses (a USE_HUB_KERNELS set in this test's own process would decide that itself)
    probe = ("import os, sys, doublebind; from doublebind.organisms.models import load_checkpoint; "
             "print(os.environ['USE_HUB_KERNELS'], load_checkpoint(sys.argv[1]).use_kernels)")
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    out = subprocess.run([sys.executable, "-c", probe, str(quick_organism[0] / "base")], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["NO", "False"]
    probe = "import doublebind, os; print(os.environ['USE_HUB_KERNELS'])"
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "USE_HUB_KERNELS": "YES"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "YES"  # the user's own setting is kept


def test_cudnn_attention_goes_last_unless_the_user_chose(monkeypatch, quick_organism):
    """`doublebind.cuda`: cuDNN attention builds a graph for every new shape, and training and
    sampling change shape every step, so doublebind sets PyTorch's switch that puts it last.
    Set before every command (the CLI's set-up) and by the distiller (library use); a value
    the user set stays."""
    import os
    from pathlib import Path

    from doublebind import cli
    from doublebind.cuda import ATTENTION_ENV, prefer_stable_attention
    from doublebind.errors import DoublebindError

    env = {}
    assert prefer_stable_attention(env) is True and env == {ATTENTION_ENV: "1"}
    for mine in ("0", "1"):
        env = {ATTENTION_ENV: mine}
        assert prefer_stable_attention(env) is False and env == {ATTENTION_ENV: mine}
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    cli._setup()
    assert os.environ[ATTENTION_ENV] == "1"
    monkeypatch.setenv(ATTENTION_ENV, "0")
    cli._setup()
    assert os.environ[ATTENTION_ENV] == "0"
    monkeypatch.delenv(ATTENTION_ENV)
    from doublebind.studies.run import run_study

    with pytest.raises(DoublebindError):  # library use: set before the study's config is even read
        run_study(Path("no-such-study.yaml"), Path("no-such-out"), show_progress=False)
    assert os.environ[ATTENTION_ENV] == "1"
    monkeypatch.delenv(ATTENTION_ENV)
    org, _ = quick_organism
    Distiller(org, tiny_recipe({"prompts": {"size": 16}, "training": {"steps": 1, "batch": 4}}), None,
              show_progress=False)
    assert os.environ[ATTENTION_ENV] == "1"


def test_the_gpu_check_names_the_attention_kernel_and_passes_its_environment(monkeypatch):
    """The GPU check's `bf16_cudnn` process gets TORCH_CUDNN_SDPA_DEPRIORITIZED=0 (its point),
    the others doublebind's own setting; each names the attention kernels a step ran."""
    import importlib.util
    import sys
    from pathlib import Path

    from doublebind.cuda import ATTENTION_ENV

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_env_under_test", path)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    assert gc.ATTENTION_ENV == ATTENTION_ENV  # spelled out there: that process cannot import doublebind
    assert gc.LOSS_RUNS["bf16_cudnn"] == (["training.precision=bf16"], False, {ATTENTION_ENV: "0"})
    assert gc.LOSS_RUNS["bf16"] == (["training.precision=bf16"], False, None)
    assert gc.attention_kernels(lambda: 1 / 0) == ["not profiled (ZeroDivisionError: division by zero)"]
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    kernels = gc.attention_kernels(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    assert kernels == ["aten::_scaled_dot_product_flash_attention_for_cpu",
                       "aten::_scaled_dot_product_flash_attention_for_cpu_backward"]
    child = f"import json, os; print(json.dumps({{'seen': os.environ.get({ATTENTION_ENV!r})}}))"
    real = gc._run
    monkeypatch.setattr(gc, "_run", lambda cmd, *a, **k: real([sys.executable, "-c", child], *a, **k))
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    assert gc._losses(Path("org"), Path("c"), [], False, timeout=60, extra_env={ATTENTION_ENV: "0"})["seen"] == "0"
    assert gc._losses(Path("org"), Path("c"), [], False, timeout=60)["seen"] is None
