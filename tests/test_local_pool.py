"""The local model pool's decisions with fake sizes and a fake device: what is unloaded to make room,
what never is, one copy per model, and the size estimate read from a model's files (issue #11)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from configs import ProviderConfig, load_settings
from llm.errors import ConfigError, NotReadyError
from llm.providers.local import LocalProvider
from llm.providers.local.pool import GB, MARGIN, ModelPool, estimate_bytes


class Device:
    """A fake GPU of `total` bytes: free memory is what the pool's loaded models leave."""

    def __init__(self, total: int):
        self.total, self.pool = total, None

    def free(self, device: str) -> int | None:
        if not device.startswith("cuda"):
            return None
        return self.total - sum(w.size or 0 for w in self.pool.loaded.values() if w.key[2] == device)


class User:
    """Stands in for a LocalProvider: the pool tells it when its weights were unloaded."""

    def __init__(self, name: str):
        self.name, self.lost = name, []

    def dropped(self, weights) -> None:
        self.lost.append(weights.key[0])


@pytest.fixture
def gpu():
    device = Device(10 * GB)
    device.pool = ModelPool(free_bytes=device.free)
    return device


def load(pool: ModelPool, user: User, model: str, size: float, device: str = "cuda:0", calls: list | None = None):
    def loader():
        if calls is not None:
            calls.append(model)
        return {"tokenizer": f"tok-{model}", "model": f"model-{model}", "special": {}}
    return pool.load(user, (model, "bfloat16", device, ""), int(size * GB), loader, user.name)


def test_models_that_fit_stay_loaded_together(gpu):
    load(gpu.pool, User("a"), "A", 4)
    load(gpu.pool, User("b"), "B", 4)
    assert sorted(k[0] for k in gpu.pool.loaded) == ["A", "B"]


def test_the_least_recently_used_idle_model_is_unloaded_first(gpu):
    a, b, c = User("a"), User("b"), User("c")
    wa = load(gpu.pool, a, "A", 4)
    wb = load(gpu.pool, b, "B", 4)
    assert gpu.pool.hold(wa)
    gpu.pool.done(wa)              # A was used after B: B is the least recently used
    load(gpu.pool, c, "C", 4)
    assert sorted(k[0] for k in gpu.pool.loaded) == ["A", "C"]
    assert b.lost == ["B"] and a.lost == [] and wb.key not in gpu.pool.loaded


def test_a_generating_model_is_never_unloaded(gpu):
    a, b = User("a"), User("b")
    wa = load(gpu.pool, a, "A", 4)
    load(gpu.pool, b, "B", 4)
    assert gpu.pool.hold(wa)       # A is generating; B is idle but newer
    load(gpu.pool, User("c"), "C", 4)
    assert sorted(k[0] for k in gpu.pool.loaded) == ["A", "C"] and a.lost == [] and b.lost == ["B"]
    with pytest.raises(NotReadyError, match="needs about 7.0 GB"):
        load(gpu.pool, User("d"), "D", 7)   # only C is idle: 2 GB free + 4 GB from C is not enough
    assert "A" in {k[0] for k in gpu.pool.loaded}


def test_a_model_too_big_even_alone_fails_with_the_fix_and_unloads_nothing(gpu):
    load(gpu.pool, User("a"), "A", 4)
    with pytest.raises(NotReadyError) as caught:
        load(gpu.pool, User("big"), "Big", 12)
    assert "12.0 GB" in caught.value.message and "quantization: 4bit" in caught.value.fix
    assert [k[0] for k in gpu.pool.loaded] == ["A"]


def test_one_copy_of_a_model_however_many_providers_name_it(gpu):
    calls: list[str] = []
    first, second = User("first"), User("second")
    w1 = load(gpu.pool, first, "A", 4, calls=calls)
    w2 = load(gpu.pool, second, "A", 4, calls=calls)
    assert w1 is w2 and calls == ["A"]
    gpu.pool.release(first, w1)
    assert "A" in {k[0] for k in gpu.pool.loaded}     # still used by the second
    gpu.pool.release(second, w2)
    assert not gpu.pool.loaded


def test_unloaded_weights_cannot_be_held_and_are_loaded_again(gpu):
    a = User("a")
    wa = load(gpu.pool, a, "A", 6)
    load(gpu.pool, User("b"), "B", 6)      # A is unloaded to make room
    assert not gpu.pool.hold(wa)            # a provider that still had it loads it again
    assert a.lost == ["A"]


def test_the_cpu_has_no_budget(gpu):
    load(gpu.pool, User("a"), "A", 64, device="cpu")
    load(gpu.pool, User("b"), "B", 64, device="cpu")
    assert len(gpu.pool.loaded) == 2


# ---- the size estimate -------------------------------------------------------------------------

def write_model(path, *, stored_dtype="bfloat16", total=None, files=(), quant=None):
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "torch_dtype": stored_dtype}
    if quant:
        config["quantization_config"] = {"quant_method": quant}
    (path / "config.json").write_text(json.dumps(config))
    if total is not None:
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}}))
    for name, size in files:
        (path / name).write_bytes(b"\0" * size)
    return path


def test_the_estimate_reads_the_index_and_converts_to_the_load_dtype(tmp_path):
    path = write_model(tmp_path / "m", stored_dtype="bfloat16", total=2_000_000)   # 1 M params
    assert estimate_bytes(path, "bfloat16") == int(2_000_000 * MARGIN)
    assert estimate_bytes(path, "float32") == int(4_000_000 * MARGIN)
    assert estimate_bytes(path, "bfloat16", "8bit") == int(1_000_000 * MARGIN)
    assert estimate_bytes(path, "bfloat16", "4bit") == int(500_000 * MARGIN)


def test_the_estimate_falls_back_to_the_weight_files_and_knows_pre_quantized_ones(tmp_path):
    path = write_model(tmp_path / "m", stored_dtype="float32", files=[("a.safetensors", 4000), ("b.safetensors", 4000)])
    assert estimate_bytes(path, "bfloat16") == int(4000 * MARGIN)
    awq = write_model(tmp_path / "awq", files=[("model.safetensors", 1000)], quant="awq")
    assert estimate_bytes(awq, "float16") == int(1000 * MARGIN)
    assert estimate_bytes(write_model(tmp_path / "empty"), "bfloat16") is None


def test_linly_7b_in_4bit_is_estimated_to_fit_an_8_gb_card(tmp_path):
    path = write_model(tmp_path / "linly", stored_dtype="float16", total=13_476_839_424)   # 6.7 B params
    assert estimate_bytes(path, "float16", "4bit") < 8 * GB < estimate_bytes(path, "float16")


# ---- quantization settings and packages ---------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes_is_not_ready_with_the_pip_command(tmp_path):
    path = write_model(tmp_path / "m", total=1000)
    status = LocalProvider(ProviderConfig("q", "local", str(path), quantization="4bit")).status()
    assert not status.ready and "bitsandbytes" in status.reason and status.fix == "pip install bitsandbytes"


@pytest.mark.skipif(importlib.util.find_spec("awq") is not None, reason="autoawq is installed")
def test_a_pre_quantized_awq_model_names_its_package(tmp_path):
    path = write_model(tmp_path / "awq", files=[("model.safetensors", 10)], quant="awq")
    status = LocalProvider(ProviderConfig("a", "local", str(path))).status()
    assert not status.ready and status.fix == "pip install autoawq"


def test_quantization_is_checked_in_the_config_file(tmp_path):
    config = tmp_path / "configs.yaml"
    config.write_text("providers:\n  q: {kind: local, model: /m, quantization: 3bit}\n")
    with pytest.raises(ConfigError, match="quantization"):
        load_settings(config, env={})
    config.write_text("providers:\n  q: {kind: local, model: /m, quantization: 4bit}\n")
    assert load_settings(config, env={}).providers["q"].quantization == "4bit"
