"""The proxies that need more than validation latents, through their commands on tiny generated inputs.

``latent-metrics`` with the linear probe (train latents read only then), ``tokenizer-metrics``
(affine equivariance, iFID) and ``model-metrics`` (FI/FIR of a trained velocity network). Expected
values come from independent computations: exactly equivariant encoders, a decoder whose
interpolations are the real images, an exactly known Gaussian score, a linearly separable probe.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusability.cli import main
from diffusability.diffusion.train import init_model, write_outputs
from diffusability.teacher.domain_net import DomainClassifier
from diffusability.io import read_parquet, save_tensors, write_json
from diffusability.tokenizers.factory import build_tokenizer
from diffusability.tokenizers.spec import TokenizerSpec

ROW_COLUMNS = ["metric", "value", "direction", "params", "n"]
TOKENIZER = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3)


def rows(path):
    frame = read_parquet(path)
    assert list(frame.columns) == ROW_COLUMNS
    assert frame["value"].dtype == np.float64 and frame["n"].dtype == np.int64
    for text in frame["params"]:
        json.loads(text)
    return frame.set_index("metric")


# ----------------------------------------------------------------------------- latent-metrics + linear probe

def separable_latents(n, seed):
    """Latents whose class is the sign pattern of two channel means: a linear probe separates them exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    latents = 0.3 * torch.randn(n, 2, 4, 4, generator=g)
    latents[:, 0] += torch.where(labels % 2 == 0, 2.0, -2.0)[:, None, None]
    latents[:, 1] += torch.where(labels // 2 == 0, 2.0, -2.0)[:, None, None]
    return latents, labels


def write_latent_dir(directory, val, val_labels, train=None, train_labels=None):
    masks = torch.zeros(val.shape[0], *val.shape[2:], dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    save_tensors(directory / "val.safetensors", {"latents": val, "labels": val_labels, "masks": masks})
    if train is not None:
        save_tensors(directory / "train.safetensors", {"latents": train, "labels": train_labels})
    save_tensors(directory / "stats.safetensors", {"mean": torch.zeros(val.shape[1]), "std": torch.ones(val.shape[1])})


def test_latent_metrics_linear_probe_reads_the_train_latents(tmp_path):
    directory = tmp_path / "latents"
    write_latent_dir(directory, *separable_latents(64, 0), *separable_latents(256, 1))
    out = tmp_path / "rows.parquet"
    spec = {"enabled": ["linear_probe", "fisher"], "params": {"linear_probe": {"max_iter": 100, "batch_size": 32}}}
    assert main(["latent-metrics", "--latents", str(directory), "--spec", json.dumps(spec), "--out", str(out)]) == 0
    frame = rows(out)
    assert list(frame.index) == ["fi", "fir", "linear_probe"]
    assert frame.loc["linear_probe", "value"] == 1.0 and frame.loc["linear_probe", "direction"] == "higher"
    assert frame.loc["linear_probe", "n"] == 64
    params = json.loads(frame.loc["linear_probe", "params"])
    assert (params["n_train"], params["batch_size"], params["max_iter"], params["tol"]) == (256, 32, 100, 1e-6)


def test_latent_metrics_without_the_probe_never_reads_train(tmp_path):
    directory = tmp_path / "latents"
    write_latent_dir(directory, *separable_latents(64, 0))          # no train.safetensors at all
    out = tmp_path / "rows.parquet"
    assert main(["latent-metrics", "--latents", str(directory), "--spec", '{"enabled": ["lds", "fi"]}',
                 "--out", str(out)]) == 0
    assert list(rows(out).index) == ["lds", "fi"]
    assert main(["latent-metrics", "--latents", str(directory), "--spec", '{"enabled": ["linear_probe"]}',
                 "--out", str(out)]) == 2                            # the probe needs the missing file


def test_metrics_cli_probe_needs_train(tmp_path, capsys):
    val, labels = separable_latents(64, 0)
    save_tensors(tmp_path / "z.safetensors", {"latents": val, "labels": labels})
    out = tmp_path / "m.parquet"
    assert main(["metrics", str(tmp_path / "z.safetensors"), "--metrics", "linear_probe", "--out", str(out)]) == 2
    assert "train" in capsys.readouterr().err
    train, train_labels = separable_latents(128, 1)
    save_tensors(tmp_path / "train.safetensors", {"latents": train, "labels": train_labels})
    assert main(["metrics", str(tmp_path / "z.safetensors"), "--metrics", "linear_probe", "--out", str(out),
                 "--train", str(tmp_path / "train.safetensors"), "--param", "linear_probe.max_iter=100"]) == 0
    assert rows(out).loc["linear_probe", "value"] == 1.0


# ----------------------------------------------------------------------------- tokenizer-metrics

@pytest.fixture(scope="module")
def tokenizer_stage(tmp_path_factory):
    """A random f2 conv VAE (16 px → 3×8×8), a domain net, a val split and raw latents of both splits."""
    root = tmp_path_factory.mktemp("tokenizer_metrics")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    save_tensors(root / "val.safetensors", {"images": images, "labels": np.arange(12) % 2})
    torch.manual_seed(0)
    spec = TokenizerSpec(**TOKENIZER)
    model = build_tokenizer(spec).eval()
    save_tensors(root / "tok" / "model.safetensors", model.state_dict())
    write_json(root / "tok" / "config.json", spec.to_dict())
    net = DomainClassifier(num_classes=2, image_size=16, width=8).eval()
    save_tensors(root / "teacher" / "model.safetensors", net.state_dict())
    write_json(root / "teacher" / "config.json", net.config())
    g = torch.Generator().manual_seed(1)
    save_tensors(root / "lat" / "val.safetensors", {"latents": torch.randn(12, 3, 8, 8, generator=g)})
    save_tensors(root / "lat" / "train.safetensors", {"latents": torch.randn(30, 3, 8, 8, generator=g)})
    save_tensors(root / "lat" / "stats.safetensors", {"mean": torch.tensor([0.1, -0.2, 0.3]),
                                                      "std": torch.tensor([1.0, 2.0, 0.5])})
    return root, model, net, torch.from_numpy(images)


def tokenizer_metrics(root, out, spec, features=None):
    """``tokenizer-metrics`` on the stage; iFID's network from the arguments ``features`` (None: the domain net)."""
    features = ["--feature-net", str(root / "teacher")] if features is None else features
    return main(["tokenizer-metrics", "--tokenizer", str(root / "tok"), "--data", str(root / "val.safetensors"),
                 "--latents", str(root / "lat"), *features, "--spec", json.dumps(spec),
                 "--out", str(out), "--device", "cpu"])


def test_equivariance_rows_match_a_per_image_loop(tokenizer_stage, tmp_path, monkeypatch):
    from diffusability.imaging import to_model_input
    from diffusability.latent_metrics import tokenizer_rows

    root, model, _, images = tokenizer_stage
    monkeypatch.setattr(tokenizer_rows, "EQUIVARIANCE_CHUNK", 5)   # 12 images: chunks of 5, 5, 2
    out = tmp_path / "rows.parquet"
    assert tokenizer_metrics(root, out, {"enabled": ["equivariance"], "batch_size": 3}) == 0
    frame = rows(out)
    assert list(frame.index) == ["rotate_error", "rotate_consistency", "scale_error", "scale_consistency"]
    mean, std = torch.tensor([0.1, -0.2, 0.3]).view(3, 1, 1), torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)

    def encode(x):
        with torch.no_grad():
            return ((model.encode(x[None]).mode()[0] - mean) / std).double()

    def compare(a, b):
        cosine = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))
        return float((a - b).pow(2).sum() / b.pow(2).sum()), float(cosine.mean())

    def resize(x, side):
        return torch.nn.functional.interpolate(x[None].float(), size=(side, side), mode="bilinear",
                                               align_corners=False)[0]

    expected = {"rotate": [], "scale": []}
    for x in to_model_input(images):
        z = encode(x)
        for k in (1, 2, 3):
            expected["rotate"].append(compare(encode(torch.rot90(x, k, (1, 2))), torch.rot90(z, k, (1, 2))))
        for image_side, latent_side in ((8, 4), (12, 6)):     # s = 0.5, 0.75 of 16 px on an f2 grid
            expected["scale"].append(compare(encode(resize(x, image_side)), resize(z, latent_side).double()))
    for family, values in expected.items():
        errors, cosines = zip(*values)
        assert frame.loc[f"{family}_error", "value"] == pytest.approx(np.mean(errors), rel=1e-5)
        assert frame.loc[f"{family}_consistency", "value"] == pytest.approx(np.mean(cosines), rel=1e-5)
    assert (frame["n"] == 12).all()
    assert set(frame["direction"]) == {"lower", "higher"}
    assert frame.loc["rotate_error", "direction"] == "lower"


def test_equivariance_subset_and_unusable_scales(tokenizer_stage, tmp_path):
    root, *_ = tokenizer_stage
    out = tmp_path / "rows.parquet"
    spec = {"enabled": ["equivariance"], "equivariance": {"scales": [0.3], "max_images": 5}}
    assert tokenizer_metrics(root, out, spec) == 0
    frame = rows(out)
    assert list(frame.index) == ["rotate_error", "rotate_consistency"]   # no NaN scale rows
    assert (frame["n"] == 5).all()
    assert json.loads(frame["params"].iloc[0])["skipped_scales"] == [0.3]


def _fd_of_decodes(model, net, images, latents):
    from diffusability.metrics.frechet import feature_statistics, frechet_distance
    from diffusability.imaging import to_model_input, to_uint8

    with torch.no_grad():
        real = net.features(to_model_input(images)).double()
        fake = net.features(to_model_input(to_uint8(model.decode(latents)))).double()
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def test_ifid_at_alpha_0_is_the_fd_of_the_decoded_queries(tokenizer_stage, tmp_path):
    root, model, net, images = tokenizer_stage
    out = tmp_path / "rows.parquet"
    assert tokenizer_metrics(root, out, {"enabled": ["ifid"], "ifid": {"alpha": 0.0, "k": 3}}) == 0
    frame = rows(out)
    from diffusability.io import load_tensors

    queries = load_tensors(root / "lat" / "val.safetensors")["latents"]
    assert frame.loc["ifid", "value"] == pytest.approx(_fd_of_decodes(model, net, images, queries), rel=1e-6)
    params = json.loads(frame.loc["ifid", "params"])
    assert (params["pool"], params["n_pool"], params["k"]) == ("train", 30, 3)


def test_ifid_at_alpha_1_with_k_1_decodes_the_cosine_nearest_pool_latent(tokenizer_stage, tmp_path):
    from diffusability.io import load_tensors

    root, model, net, images = tokenizer_stage
    queries = load_tensors(root / "lat" / "val.safetensors")["latents"]
    for pool_name in ("train", "val"):
        pool = load_tensors(root / "lat" / f"{pool_name}.safetensors")["latents"]
        nearest = []
        for i, q in enumerate(queries):              # brute force: every pool latent, self excluded for val
            cosines = [float(torch.nn.functional.cosine_similarity(q.flatten(), p.flatten(), dim=0))
                       if not (pool_name == "val" and j == i) else -2.0 for j, p in enumerate(pool)]
            nearest.append(pool[int(np.argmax(cosines))])
        out = tmp_path / f"{pool_name}.parquet"
        assert tokenizer_metrics(root, out, {"enabled": ["ifid"], "ifid": {"alpha": 1.0, "k": 1,
                                                                            "pool": pool_name}}) == 0
        expected = _fd_of_decodes(model, net, images, torch.stack(nearest))
        assert rows(out).loc["ifid", "value"] == pytest.approx(expected, rel=1e-5), pool_name


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A kaiming-initialised FID Inception (the architecture of the real one, random weights, no softmax layer)
    and its state dict file, as the Inception tests use."""
    from diffusability.evaluation.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    path = tmp_path_factory.mktemp("ifid_inception") / "fid_inception.safetensors"
    save_tensors(path, {k: v for k, v in net.state_dict().items() if k != "softmax_weight"})
    return net, path


def _brute_force_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two equally sized feature sets without a matrix square root: for centred rows
    A, B (n × F), the nonzero eigenvalues of Σ_A Σ_B are σ_i(A Bᵀ)² / (n − 1)², so tr √(Σ_A Σ_B) is the
    nuclear norm of A Bᵀ over n − 1 (exact even when, as here, n ≪ F makes both covariances singular)."""
    n = a.shape[0]
    ca, cb = a - a.mean(0), b - b.mean(0)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ((ca ** 2).sum() + (cb ** 2).sum()) / (n - 1)
                 - 2 * np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / (n - 1))


def test_ifid_in_the_fid_inception_is_the_fd_of_pool3_of_decoded_slerp_midpoints(tokenizer_stage, random_inception,
                                                                                  tmp_path):
    """The official protocol (feature_net: inception): each query latent slerped half-way to its cosine-nearest
    train latent (k = 1: no random pick), decoded, quantised to uint8, and compared with the real query images
    by the Fréchet distance of the Inception's pool3 — every step recomputed here by its formula."""
    from diffusability.imaging import to_uint8
    from diffusability.io import load_tensors
    from diffusability.seeding import seeded_subset

    root, model, _, images = tokenizer_stage
    net, weights = random_inception
    out = tmp_path / "rows.parquet"
    # 4 queries keep the 299-px Inception passes short; no --feature-net: the domain net is not needed
    spec = {"enabled": ["ifid"], "ifid": {"k": 1, "alpha": 0.5, "max_queries": 4, "feature_net": "inception"}}
    assert tokenizer_metrics(root, out, spec, ["--inception-weights", str(weights)]) == 0
    frame = rows(out)
    params = json.loads(frame.loc["ifid", "params"])
    assert params["feature_net"] == "inception" and "pool3" in params["features"]

    index = seeded_subset(12, 4, "ifid-queries", 0)           # the documented seeded subset of queries
    queries = load_tensors(root / "lat" / "val.safetensors")["latents"][index].double().flatten(1)
    pool = load_tensors(root / "lat" / "train.safetensors")["latents"].double().flatten(1)
    cosine = (queries / queries.norm(dim=1, keepdim=True)) @ (pool / pool.norm(dim=1, keepdim=True)).T
    theta = torch.arccos(cosine.max(dim=1).values)
    # slerp at α = ½: sin(θ/2)/sin θ · (z + z_nn)
    midpoints = (torch.sin(theta / 2) / torch.sin(theta))[:, None] * (queries + pool[cosine.argmax(dim=1)])
    with torch.no_grad():
        decoded = to_uint8(model.decode(midpoints.float().reshape(4, 3, 8, 8)))
        real = net(images[index])["pool3"].double().numpy()   # uint8 NHWC in: TF1 resize to 299 inside
        fake = net(decoded)["pool3"].double().numpy()
    assert frame.loc["ifid", "value"] == pytest.approx(_brute_force_fd(real, fake), rel=1e-6)
    assert frame.loc["ifid", "n"] == 4


def test_ifid_feature_net_errors_name_the_key(tokenizer_stage, random_inception, tmp_path, capsys):
    root, *_ = tokenizer_stage
    _, weights = random_inception
    out = tmp_path / "rows.parquet"
    inception = {"enabled": ["ifid"], "ifid": {"feature_net": "inception"}}
    assert tokenizer_metrics(root, out, inception) == 2                               # the domain net only
    assert "ifid.feature_net 'inception' needs --inception-weights" in capsys.readouterr().err
    assert tokenizer_metrics(root, out, {"enabled": ["ifid"]}, ["--inception-weights", str(weights)]) == 2
    assert "ifid.feature_net 'domain' needs --feature-net" in capsys.readouterr().err   # the command's default
    assert tokenizer_metrics(root, out, {"enabled": ["ifid"], "ifid": {"feature_net": "clip"}}) == 2
    assert "ifid.feature_net must be one of ['inception', 'domain']" in capsys.readouterr().err
    assert tokenizer_metrics(root, out, inception, ["--inception-weights", str(weights),
                                                    "--inception-sha256", "0" * 64]) == 2
    assert "does not match the expected" in capsys.readouterr().err
    assert not out.exists()
    # equivariance alone needs no feature network at all
    assert tokenizer_metrics(root, out, {"enabled": ["equivariance"], "equivariance": {"max_images": 2}}, []) == 0


def test_tokenizer_metrics_refuses_bad_specs(tokenizer_stage, tmp_path, capsys):
    root, *_ = tokenizer_stage
    out = tmp_path / "rows.parquet"
    assert tokenizer_metrics(root, out, {"enabled": ["ifid"], "ifid": {"kk": 3}}) == 2
    assert "kk" in capsys.readouterr().err
    assert tokenizer_metrics(root, out, {"enabled": ["equivariance", "fid"]}) == 2
    assert "enabled" in capsys.readouterr().err
    assert tokenizer_metrics(root, out, {"enabled": ["ifid"], "ifid": {"pool": "test"}}) == 2
    assert "pool" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- model-metrics

def write_zero_velocity_model(directory, channels=3, grid=4, num_classes=4):
    """An untrained SiT: adaLN-zero initialisation makes its output (the velocity) exactly 0."""
    spec = {"name": "sit-xs", "family": "sit", "depth": 1, "width": 32, "heads": 2, "num_classes": num_classes}
    model = init_model(spec, channels, grid, num_classes).eval()
    from diffusability.diffusion.train import as_spec

    write_outputs(directory, model, model, as_spec(spec),
                  {"in_channels": channels, "grid_size": grid, "num_classes": num_classes}, [])
    return model


def test_model_fisher_of_a_zero_velocity_field_has_a_closed_form(tmp_path):
    """v ≡ 0: D(y) = t·y, score = −(1−t)·y/s, ∇score = −(1−t)/s·I with t = 1/(1+√s), so per s
    φ(s) = E‖y‖²/(D(1+√s)²) = (E‖z‖²/D + s)/(1+√s)² and ψ(s) = s/(1+√s)² (Hutchinson: ‖u‖²/D ≈ 1)."""
    from diffusability.metrics.fisher import log_s_grid

    write_zero_velocity_model(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    latents = 1.5 * torch.randn(400, 3, 4, 4, generator=g)
    labels = torch.arange(400) % 4
    save_tensors(tmp_path / "lat" / "val.safetensors", {"latents": latents, "labels": labels})
    save_tensors(tmp_path / "lat" / "stats.safetensors", {"mean": torch.zeros(3), "std": torch.ones(3)})
    spec = {"enabled": ["fisher"], "fisher": {"s_min": 0.01, "s_max": 10.0, "s_points": 6, "probes": 4,
                                              "max_samples": 300, "batch_size": 128}}
    out = tmp_path / "rows.parquet"
    assert main(["model-metrics", "--diffusion", str(tmp_path / "model"), "--latents", str(tmp_path / "lat"),
                 "--spec", json.dumps(spec), "--out", str(out), "--device", "cpu"]) == 0
    frame = rows(out)
    assert list(frame.index) == ["fi_model", "fir_model"] and (frame["n"] == 300).all()
    assert set(frame["direction"]) == {"none"}   # diagnostics (docs/metrics.md §8.1)
    s = log_s_grid(0.01, 10.0, 6).numpy()
    second_moment = float(latents.pow(2).mean())          # the subset's E‖z‖²/D ≈ that of all 400
    fi = np.mean((second_moment + s) / (1 + np.sqrt(s)) ** 2)
    fir = np.mean(s / (1 + np.sqrt(s)) ** 2)
    assert frame.loc["fi_model", "value"] == pytest.approx(fi, rel=0.03)
    assert frame.loc["fir_model", "value"] == pytest.approx(fir, rel=0.03)
    assert json.loads(frame.loc["fi_model", "params"])["weights"] == "ema"


def test_model_metrics_refuses_latents_of_another_shape(tmp_path, capsys):
    write_zero_velocity_model(tmp_path / "model", channels=3, grid=4)
    save_tensors(tmp_path / "lat" / "val.safetensors", {"latents": torch.randn(8, 2, 4, 4),
                                                        "labels": torch.arange(8) % 4})
    save_tensors(tmp_path / "lat" / "stats.safetensors", {"mean": torch.zeros(2), "std": torch.ones(2)})
    assert main(["model-metrics", "--diffusion", str(tmp_path / "model"), "--latents", str(tmp_path / "lat"),
                 "--spec", '{"enabled": ["fisher"]}', "--out", str(tmp_path / "o.parquet"), "--device", "cpu"]) == 2
    assert "do not fit the model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config, aggregation, correlation

def test_switching_network_metrics_on_leaves_the_latent_metrics_spec_alone(repo):
    import copy

    import yaml

    from diffusability.workflow import config as cfg

    base = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    base["metrics"].pop("tokenizer"), base["metrics"].pop("model")
    plain = cfg.validate_config(base)
    changed = copy.deepcopy(base)
    changed["metrics"]["tokenizer"] = {"enabled": ["ifid"], "ifid": {"k": 3}}
    changed["metrics"]["model"] = {"enabled": ["fisher"]}
    switched = cfg.validate_config(changed)
    assert cfg.metrics_spec(switched) == cfg.metrics_spec(plain)        # latent_metrics does not rerun
    assert set(cfg.metrics_spec(plain)) == {"seed", "enabled", "params"}
    assert plain["metrics"]["tokenizer"]["enabled"] == [] and plain["metrics"]["model"]["enabled"] == []
    spec = cfg.tokenizer_metrics_spec(switched)
    assert spec["ifid"] == {"k": 3, "alpha": 0.5, "pool": "train", "max_pool": None, "max_queries": None, "seed": 0,
                            "feature_net": "domain"}   # smoke.yaml has no FID Inception
    assert spec["equivariance"] == {"rotations": [1, 2, 3], "scales": [0.5, 0.75], "max_images": None}
    assert cfg.model_metrics_spec(switched)["fisher"]["s_points"] == 32
    # the schema's defaults are the commands' defaults
    from diffusability.latent_metrics.spec import MODEL_METRICS_DEFAULTS as MODEL_DEFAULTS, TOKENIZER_METRICS_DEFAULTS as TOKENIZER_DEFAULTS

    assert spec["batch_size"] == TOKENIZER_DEFAULTS["batch_size"]
    assert spec["equivariance"] == TOKENIZER_DEFAULTS["equivariance"]
    assert spec["ifid"] == {**TOKENIZER_DEFAULTS["ifid"], "k": 3}
    assert cfg.model_metrics_spec(switched)["fisher"] == MODEL_DEFAULTS["fisher"]
    assert cfg.metrics_need_train_latents(plain)          # smoke.yaml names linear_probe
    with pytest.raises(Exception, match="metrics.tokenizer.enabled"):
        cfg.validate_config({**base, "metrics": {**base["metrics"], "tokenizer": {"enabled": ["fid"]}}})


def _smoke(repo) -> dict:
    import yaml

    return yaml.safe_load((repo / "config" / "smoke.yaml").read_text())


def _with(config: dict, generation: dict | None = None, ifid: dict | None = None) -> dict:
    """``config`` with keys of ``generation`` and ``metrics.tokenizer.ifid`` replaced (a deep enough copy)."""
    import copy

    config = copy.deepcopy(config)
    config["generation"] = {**config.get("generation", {}), **(generation or {})}
    tokenizer = config["metrics"]["tokenizer"]
    tokenizer["ifid"] = {**tokenizer.get("ifid", {}), **(ifid or {})}
    return config


def test_ifid_feature_net_defaults_to_the_studys_fid_inception(repo, tmp_path):
    """Unset, iFID is in the FID Inception's space when the study has that network and in the domain net's
    otherwise (the embedded default: no Inception weights); an explicit value wins; the spec carries it."""
    from diffusability.workflow import config as cfg

    weights = tmp_path / "fid_inception.safetensors"
    weights.write_bytes(b"")
    inception = {"feature_network": "inception", "inception_weights": str(weights)}
    cases = [({}, {}, "domain"), (inception, {}, "inception"), (inception, {"feature_net": "domain"}, "domain"),
             ({"inception_weights": str(weights)}, {"feature_net": "inception"}, "inception")]
    for generation, ifid, expected in cases:
        config = cfg.validate_config(_with(_smoke(repo), generation, ifid))
        assert cfg.ifid_feature_net(config) == expected, (generation, ifid)
        assert cfg.tokenizer_metrics_spec(config)["ifid"]["feature_net"] == expected
        assert cfg.ifid_uses_inception(config) == (expected == "inception")
    for name in ("config.yaml", "smoke.yaml"):   # the shipped small studies: no weights, the domain net
        import yaml

        shipped = cfg.validate_config(yaml.safe_load((repo / "config" / name).read_text()))
        assert cfg.tokenizer_metrics_spec(shipped)["ifid"]["feature_net"] == "domain", name


def test_ifid_in_the_inception_without_weights_is_refused_naming_the_key(repo, tmp_path):
    from diffusability.errors import DiffusabilityError
    from diffusability.workflow import config as cfg

    with pytest.raises(DiffusabilityError, match=r"metrics\.tokenizer\.ifid\.feature_net: 'inception' needs "
                                                 r"generation\.inception_weights"):
        cfg.validate_config(_with(_smoke(repo), ifid={"feature_net": "inception"}))
    off = _with(_smoke(repo), ifid={"feature_net": "inception"})
    off["metrics"]["tokenizer"]["enabled"] = ["equivariance"]     # no iFID job: nothing reads the weights
    assert not cfg.ifid_uses_inception(cfg.validate_config(off))
    # gFID on the domain net, iFID on the Inception: the weights are still checked, by their key
    missing = cfg.validate_config(_with(_smoke(repo), {"inception_weights": str(tmp_path / "absent.pth")},
                                        {"feature_net": "inception"}))
    problems = [str(problem) for problem in cfg.generation_path_problems(missing)]
    assert problems == [f"generation.inception_weights: {tmp_path / 'absent.pth'} not found (the FID Inception "
                        "state dict of metrics.tokenizer.ifid.feature_net: inception)"]
    assert cfg.generation_path_problems(cfg.validate_config(_smoke(repo))) == []


@pytest.mark.slow
def test_tokenizer_metrics_rule_passes_ifids_network_and_the_device(repo, snakemake_exe, workdir_factory, tmp_path):
    """The rule's command line (a dry run with -p): the Inception weights (and their hash) and no domain net for
    iFID in the Inception; the domain net otherwise; `--device auto` for both metric commands."""
    from workflow_helpers import run_snakemake

    from diffusability.workflow import layout

    weights = tmp_path / "fid_inception.safetensors"
    weights.write_bytes(b"")
    inception = _with(_smoke(repo), {"feature_network": "inception", "inception_weights": str(weights),
                                     "inception_sha256": "ab" * 32})
    for name, config in (("inception", inception), ("domain", _smoke(repo))):
        work = workdir_factory(config, name=f"ifid_{name}")
        result = run_snakemake(snakemake_exe, work, "-n", "-p", "--cores", "1", layout.tokenizer_metric_rows("lcr"),
                               layout.latent_metric_rows("lcr"), timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        line = next(line for line in output.splitlines() if "diffusability tokenizer-metrics" in line
                    or " tokenizer-metrics " in line)
        assert "--device auto" in line
        if name == "inception":
            assert f"--inception-weights {weights} --inception-sha256 {'ab' * 32}" in line
            assert "--feature-net" not in line
        else:
            assert "--feature-net results/teacher" in line and "--inception-weights" not in line
        latent = next(line for line in output.splitlines() if " latent-metrics " in line)
        assert "--device auto" in latent


def _tidy(values: dict, direction="lower"):
    import pandas as pd

    return pd.DataFrame([{"metric": m, "value": float(v), "direction": direction, "params": "{}", "n": 8,
                          "seconds": 0.1} for m, v in values.items()])


def test_aggregate_keys_model_rows_by_backbone_and_correlate_uses_each_backbones_own(tmp_path, monkeypatch):
    """Two backbones whose fd follows fi_model of its own backbone exactly (and anti-follows the other's)."""
    import pandas as pd

    from diffusability.workflow import layout
    from diffusability.io import write_parquet

    monkeypatch.chdir(tmp_path)
    toks = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    fi = {"sit": rng.normal(size=5), "dit": rng.normal(size=5)}
    for i, tok in enumerate(toks):
        write_parquet(_tidy({"lds": rng.normal()}, "higher"), layout.latent_metric_rows(tok))
        write_parquet(_tidy({"ifid": rng.normal() + 10}), layout.tokenizer_metric_rows(tok))
        write_parquet(_tidy({"rfd": rng.normal() + 5}), layout.reconstruction_rows(tok))
        for bb in ("sit", "dit"):
            write_parquet(_tidy({"fi_model": fi[bb][i], "fir_model": fi[bb][i] ** 2}, "none"),
                          layout.model_metric_rows(tok, bb))
            write_parquet(_tidy({"fd": 3 + 2 * fi[bb][i]}), layout.generation_rows(tok, bb, "1.00"))
    spec = {"tokenizers": {tok: {"family": "conv-f4d4", "regularizer": "none", "regularizer_params": {}}
                           for tok in toks}, "config": {}}
    args = ["aggregate", "--spec", json.dumps(spec), "--out-dir", "tables",
            "--reconstruction", *[layout.reconstruction_rows(t) for t in toks],
            "--metrics", *[layout.latent_metric_rows(t) for t in toks],
            "--tokenizer-metrics", *[layout.tokenizer_metric_rows(t) for t in toks],
            "--model-metrics", *[layout.model_metric_rows(t, b) for t in toks for b in ("sit", "dit")],
            "--generation", *[layout.generation_rows(t, b, "1.00") for t in toks for b in ("sit", "dit")]]
    assert main(args) == 0
    metrics = pd.read_parquet("tables/metrics.parquet")
    from diffusability.analysis.tables import PROVENANCE_COLUMNS

    assert list(metrics.columns) == ["tokenizer", *ROW_COLUMNS, *PROVENANCE_COLUMNS, "backbone"]
    assert len(metrics) == 5 * (1 + 1 + 2 * 2)
    assert set(metrics.loc[metrics.metric.isin(["lds", "ifid"]), "backbone"]) == {""}
    model_rows = metrics[metrics.metric == "fi_model"].set_index(["tokenizer", "backbone"])["value"]
    assert model_rows[("c", "dit")] == fi["dit"][2] and model_rows[("c", "sit")] == fi["sit"][2]

    assert main(["correlate", "--tables", "tables", "--spec", '{"methods": ["pearson"]}',
                 "--out-correlations", "corr.parquet", "--out-regressions", "reg.parquet"]) == 0
    table = pd.read_parquet("corr.parquet").set_index(["backbone", "proxy"])
    for bb in ("sit", "dit"):
        assert table.loc[(bb, "latent/fi_model"), "r"] == pytest.approx(1.0, abs=1e-12)   # its own backbone's fi
        assert table.loc[(bb, "latent/fi_model"), "direction"] == "none"   # a diagnostic
        expected = np.corrcoef(np.array([m for m in metrics[metrics.metric == "ifid"].value]),
                               3 + 2 * fi[bb])[0, 1]
        assert table.loc[(bb, "latent/ifid"), "r"] == pytest.approx(expected, abs=1e-10)
    regressions = pd.read_parquet("reg.parquet")
    assert set(regressions["backbone"]) == {"sit", "dit"}
