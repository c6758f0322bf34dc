"""bltkit.weights: the one config + safetensors I/O every model kind saves and loads through."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bltkit import config as cfgio
from bltkit import weights


@dataclass
class TinyConfig:
    width: int = 3


class Tiny(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.width, 2)
        self.register_buffer("steps", torch.zeros(1, dtype=torch.long))


def _parse(data, source):
    return cfgio.from_dict(TinyConfig, data, source=source)


def test_round_trip_is_exact_and_leaves_no_temporary_files(tmp_path):
    torch.manual_seed(0)
    m = Tiny(TinyConfig(width=5))
    m.steps += 7
    weights.save_config_and_weights(m, m.cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [weights.CONFIG_FILE, weights.WEIGHTS_FILE]
    back = weights.load_pretrained(tmp_path, _parse, Tiny, dtype=torch.float64)
    assert back.cfg == TinyConfig(width=5)
    assert back.proj.weight.dtype == torch.float64 and back.steps.dtype == torch.long  # ints never cast
    torch.testing.assert_close(back.proj.weight, m.proj.weight.double(), rtol=0, atol=0)
    assert int(back.steps) == 7


def test_errors_name_the_tensor_and_the_file(tmp_path):
    m = Tiny(TinyConfig(width=4))
    weights.save_config_and_weights(m, m.cfg, tmp_path)
    f = tmp_path / weights.WEIGHTS_FILE
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor proj\.weight has shape \(2, 4\), the config expects \(2, 3\)"):
        weights.load_weights_into(Tiny(TinyConfig(width=3)), f)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    del state["proj.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing tensors \['proj\.bias'\]; unexpected tensors \['extra'\]"):
        weights.assign_weights(Tiny(TinyConfig(width=4)), state, "somewhere")
    state = dict(m.state_dict(), **{"proj.bias": torch.tensor([0.0, float("nan")])})
    with pytest.raises(ValueError, match="proj.bias holds 1 NaN"):
        weights.assign_weights(Tiny(TinyConfig(width=4)), state, "somewhere")


def test_unknown_config_key_missing_file_and_pickle_are_refused(tmp_path):
    m = Tiny(TinyConfig())
    weights.save_config_and_weights(m, {"width": 3, "depth": 2}, tmp_path)
    with pytest.raises(cfgio.ConfigError, match="depth"):
        weights.load_pretrained(tmp_path, _parse, Tiny)
    (tmp_path / weights.WEIGHTS_FILE).write_bytes(b"\x80\x04not safetensors")  # a pickle header
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        weights.load_weights_into(m, tmp_path / weights.WEIGHTS_FILE)
    (tmp_path / weights.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"tiny directory {tmp_path} has no model.safetensors"):
        weights.load_pretrained(tmp_path, _parse, Tiny, what="tiny")
