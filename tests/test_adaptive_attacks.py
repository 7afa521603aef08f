"""Adaptive attacks: query averaging, pad-drop, coverage-capped sybils, BESA-style detection and recovery.

Victims are random convnets: the ``encoder`` fixture where only the ledger matters, else
``calibrated_victim`` (its BatchNorm statistics set on smooth images: the uncalibrated one answers almost
the same vector for every image, so "the spread between images" that the noise statistics use is ~0).
The pool is random smooth images in [0, 1] (``tests.test_attack.pool``). The defences are small
stand-ins written here, plus the project's own where they exist.
"""
import dataclasses
import zlib

import pytest
import torch

from sslaudit import registry
from sslaudit.api import SimulatedAPI
from sslaudit.attacks.besa import BESA, complete, detect, grid_step, wiener
from sslaudit.attacks.coverage_capped import CoverageSybil, balanced_clusters
from sslaudit.attacks.direct_extraction import DirectExtraction
from sslaudit.attacks.pad_drop import PadDrop, constant_dims
from sslaudit.attacks.query_averaging import QueryAveraging, nudged
from sslaudit.attacks.sybil import SybilAttack
from sslaudit.data import ImageData
from sslaudit.defenses.gaussian_noise import GaussianNoise
from sslaudit.secret import DeploymentSecret
from tests.test_attack import QUICK, calibrated_victim, pool, smooth_images

CPU = torch.device("cpu")
ONE_EPOCH = dataclasses.replace(QUICK, epochs=1)
INNER = DirectExtraction(loss="mse", stolen_arch="convnet-small", augment_stolen=False, train=ONE_EPOCH)


class ConstantPad:
    """B4B's shuffle_pad as a stand-in: ``pad`` values fixed per account appended, then a fixed permutation."""

    def __init__(self, dim: int, pad: int):
        self.dim, self.pad = dim, pad

    def parts(self, account):
        gen = torch.Generator().manual_seed(zlib.crc32(account.encode()))
        return torch.randn(self.pad, generator=gen), torch.randperm(self.dim + self.pad, generator=gen)

    def pad_positions(self, account):
        return sorted((self.parts(account)[1] >= self.dim).nonzero().flatten().tolist())

    def out_dim(self, dim):
        return dim + self.pad

    def __call__(self, account, images, features):
        values, perm = self.parts(account)
        return torch.cat([features, values.expand(len(features), -1)], 1)[:, perm]


class Rounding:
    def __init__(self, step):
        self.step = step

    def __call__(self, account, images, features):
        return torch.round(features / self.step) * self.step


class TopK:
    def __init__(self, k):
        self.k = k

    def __call__(self, account, images, features):
        keep = features.abs().topk(self.k, dim=1).indices
        return torch.zeros_like(features).scatter(1, keep, features.gather(1, keep))


class ImageKeyedNoise:
    """B4B-style noise: the same (account, image) always gets the same draw; a new image, a new draw."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, account, images, features):
        seeds = [zlib.crc32(account.encode() + image.numpy().tobytes()) for image in images.cpu()]
        noise = torch.stack([torch.randn(features.shape[1], generator=torch.Generator().manual_seed(s))
                             for s in seeds])
        return features + self.sigma * noise


class Recorder:
    """A pass-through defence that keeps every image each account sent."""

    def __init__(self):
        self.sent = {}

    def __call__(self, account, images, features):
        self.sent.setdefault(account, []).append(images.flatten(1).clone())
        return features


def metered(victim, attack, budgets, defenses=()):
    """An API metered as ``sslaudit.audit.steal_curve`` meters it: no default budget, each declared share set."""
    api = SimulatedAPI(victim, defenses=list(defenses), budget=0, device=CPU, secret=DeploymentSecret.fixed("t"))
    for name, share in attack.account_budgets(budgets, "eve").items():
        api.set_budget(name, share)
    return api


def relative_error(targets, clean):
    """||targets − clean||² over the spread of the clean answers between images."""
    return float((targets - clean).pow(2).sum() / (clean - clean.mean(0)).pow(2).sum())


ATTACKS = {
    "average": lambda: registry.build("attack", "average:copies=4", inner=INNER),
    "average-nudge": lambda: QueryAveraging(copies=3, views="nudge", inner=INNER),
    "average-augment": lambda: QueryAveraging(copies=2, views="augment", inner=INNER),
    "pad-drop": lambda: PadDrop(inner=INNER),
    "coverage-sybil": lambda: CoverageSybil(accounts=4, inner=INNER),
    "besa": lambda: BESA(inner=INNER),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("budgets", [[203], [130, 257]])
def test_the_ledgers_are_what_each_account_declared_and_add_up_to_the_budgets(encoder, name, budgets):
    attack = ATTACKS[name]()
    api = metered(encoder, attack, budgets, [GaussianNoise(sigma=0.5)])
    results = attack.run_curve(api, pool(300), budgets, account="eve")
    declared = attack.account_budgets(budgets, "eve")
    spent = {account: led.images for account, led in api.ledgers().items()}
    assert spent == declared  # every declared query was sent, none beyond
    assert [r.queries for r in results] == budgets
    nested = sum(declared.values()) == max(budgets)  # one purchase whose prefixes make the curve
    assert sum(spent.values()) == (max(budgets) if nested else sum(budgets))
    assert all(r.encoder.dim == encoder.dim for r in results)


def test_averaging_four_fresh_noisy_answers_quarters_the_target_error():
    victim = calibrated_victim()
    api = SimulatedAPI(victim, defenses=[GaussianNoise(relative=True, sigma=1.0)], device=CPU)
    purchase = QueryAveraging(copies=4).buy(api, pool(64), budget=256)
    clean = api.clean_features(purchase.images)
    answers = purchase.view_answers  # (64 images, 4 answers, d)
    assert torch.allclose(purchase.answers, (answers[:, 0] + answers[:, 1] + answers[:, 2] + answers[:, 3]) / 4)
    single, averaged = relative_error(answers[:, 0], clean), relative_error(purchase.answers, clean)
    assert 0.15 < averaged / single < 0.35, (single, averaged)  # noise variance / copies: 1/4
    assert purchase.noise_rel() > 1  # sigma=1.0 relative: the noise dwarfs the spread between images


def test_against_image_keyed_noise_repeats_buy_nothing_and_nudges_do():
    victim = calibrated_victim()
    errors = {}
    for views in ("repeat", "nudge"):
        api = SimulatedAPI(victim, defenses=[ImageKeyedNoise(sigma=0.2)], device=CPU)
        purchase = QueryAveraging(copies=4, views=views).buy(api, pool(64), budget=256)
        clean = api.clean_features(purchase.images)
        errors[views] = (relative_error(purchase.view_answers[:, 0], clean), relative_error(purchase.answers, clean))
    assert errors["repeat"][1] == pytest.approx(errors["repeat"][0], rel=1e-6)  # four identical answers
    assert errors["nudge"][1] < 0.35 * errors["nudge"][0], errors


def test_nudges_change_one_pixel_by_one_grey_level_and_nest():
    images = pool(30).as_float()
    views = nudged(images, 4, seed=0).view(30, 4, -1)
    changed = (views - images.flatten(1)[:, None]).abs()
    assert (changed[:, 0] == 0).all() and ((changed[:, 1:] > 0).sum(-1) == 1).all()
    assert torch.allclose(changed.amax(-1)[:, 1:], torch.tensor(1 / 255))
    assert torch.equal(nudged(images[:10], 4, seed=0), views[:10].flatten(0, 1).view(40, *images.shape[1:]))


def test_an_averaging_curve_is_nested_prefixes_of_one_purchase(encoder):
    attack = QueryAveraging(copies=4, views="augment", inner=INNER)
    api = SimulatedAPI(encoder, device=CPU)
    big = attack.buy(api, pool(100), budget=203)
    small = attack.buy(api, pool(100), budget=101)
    part = big.prefix(101)
    assert part.queries == 101 and len(part.images) == 26 == len(small.images)  # 25 x 4 + 1
    assert torch.equal(part.images, small.images) and torch.allclose(part.answers, small.answers, atol=1e-5)


def test_pad_drop_finds_exactly_the_pad_dimensions():
    victim = calibrated_victim()
    defense = ConstantPad(victim.dim, pad=40)
    api = SimulatedAPI(victim, defenses=[defense], device=CPU)
    result = PadDrop(inner=INNER).run(api, pool(200), budget=200, account="eve")
    assert result.extra["dropped"] == defense.pad_positions("eve")
    assert result.extra["dropped_dims"] == 40 and result.extra["kept_dims"] == victim.dim == result.encoder.dim
    plain = PadDrop(inner=INNER).run(SimulatedAPI(victim, device=CPU), pool(200), budget=200)
    assert plain.extra["dropped_dims"] == 0


def test_constant_dims_is_relative_to_the_median_variance():
    gen = torch.Generator().manual_seed(0)
    answers = torch.cat([1e-3 * torch.randn(50, 6, generator=gen), torch.full((50, 2), 3.0)], 1)
    assert constant_dims(answers).tolist() == [False] * 6 + [True] * 2  # tiny features are still features
    assert constant_dims(1000 * answers).tolist() == [False] * 6 + [True] * 2


def test_coverage_sybil_accounts_share_only_the_anchors_and_each_sends_one_cluster():
    recorder = Recorder()
    groups = smooth_images(4, seed=50)  # a pool of four kinds of image, shuffled
    kind = torch.arange(240) % 4
    images = (groups[kind] + 0.1 * (smooth_images(240, seed=51) - 0.5)).clamp(0, 1)
    data = ImageData(images.mul(255).round().to(torch.uint8), kind, "four kinds")
    attack = CoverageSybil(accounts=4, anchors=8, inner=INNER)
    result = attack.run(SimulatedAPI(calibrated_victim(), defenses=[recorder], device=CPU), data, budget=240,
                        account="eve")
    sent = {name: torch.cat(batches) for name, batches in recorder.sent.items()}
    assert sorted(sent) == [f"eve-{k}" for k in range(1, 5)] and result.queries == 240
    anchors = sent["eve-1"][:8]
    chunks = [rows[8:] for rows in sent.values()]
    assert all(torch.equal(rows[:8], anchors) for rows in sent.values())
    for i, a in enumerate(chunks):
        for b in chunks[i + 1:]:
            assert torch.cdist(a, b).min() > 0  # no image sent by two accounts, except the anchors
    assert sorted(len(c) for c in chunks) == [52] * 4  # the sybil split: (240 - 4 x 8) / 4
    label = {bytes(row.numpy()): int(k) for row, k in zip(data.images.flatten(1), kind)}
    purity = [max(torch.bincount(torch.tensor([label[bytes(r.mul(255).round().byte().numpy())] for r in c]),
                                 minlength=4)) / len(c) for c in chunks]
    assert min(purity) >= 0.9, purity  # each account got (almost only) one kind of image: 0.94 .. 1.0
    assert result.extra["cluster_spread"] < 0.5


def test_coverage_sybil_sends_the_same_images_as_the_sybil_attack():
    victim = calibrated_victim()
    sent = {}
    for cls in (SybilAttack, CoverageSybil):
        recorder = Recorder()
        cls(accounts=3, anchors=10, inner=INNER).buy(SimulatedAPI(victim, defenses=[recorder], device=CPU), pool(200),
                                                     budget=150, account="eve")
        rows = torch.cat([torch.cat(b) for b in recorder.sent.values()])
        sent[cls] = rows.unique(dim=0)
    assert torch.equal(sent[SybilAttack], sent[CoverageSybil])


def test_balanced_clusters_have_the_sizes_asked_and_follow_the_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 5, generator=gen) + 10 * k for k in range(3)])
    labels = balanced_clusters(x, [30, 30, 30], seed=1)
    assert torch.bincount(labels).tolist() == [30, 30, 30]
    assert all(len(labels[30 * k: 30 * k + 30].unique()) == 1 for k in range(3))
    assert torch.bincount(balanced_clusters(x, [50, 25, 15], seed=1)).tolist() == [50, 25, 15]


STAND_INS = {
    "none": ([], ()),
    "fresh noise": ([GaussianNoise(relative=True, sigma=0.3)], ("fresh-noise",)),
    "image-keyed noise": ([ImageKeyedNoise(sigma=0.05)], ("deterministic-noise",)),
    "rounding": ([Rounding(0.05)], ("rounding",)),
    "top-k": ([TopK(16)], ("topk",)),
    "constant pad": ([ConstantPad(128, 32)], ("pad",)),
}


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_besa_names_the_perturbation(name):
    defenses, kinds = STAND_INS[name]
    api = SimulatedAPI(calibrated_victim(), defenses=defenses, device=CPU)
    purchase = BESA().buy(api, pool(300), budget=256)
    assert purchase.detection.kinds == kinds, purchase.detection
    assert api.ledger("attacker").images == 256 and purchase.queries == 256


PROJECT_DEFENSES = {"noise:sigma=0.3": ("fresh-noise",), "round": ("rounding",), "round:decimals=1": ("rounding",),
                    "topk:k=16": ("topk",), "transform:kind=pad_shuffle": ("pad",),
                    "transform:kind=affine_pad_shuffle": ("pad",), "truncate": ()}


@pytest.mark.parametrize("spec", sorted(PROJECT_DEFENSES))
def test_besa_names_the_project_defences(spec):
    try:
        defense = registry.build("defense", spec)
    except KeyError:
        pytest.skip(f"defence {spec} not in this checkout")
    api = SimulatedAPI(calibrated_victim(), defenses=[defense], device=CPU, secret=DeploymentSecret.fixed("t"))
    assert BESA().buy(api, pool(300), budget=256).detection.kinds == PROJECT_DEFENSES[spec]


RECOVERABLE = {"fresh noise": GaussianNoise(relative=True, sigma=1.0), "image-keyed noise": ImageKeyedNoise(0.15),
               "top-k": TopK(16)}


@pytest.mark.parametrize("name", sorted(RECOVERABLE))
def test_besa_recovery_brings_the_answers_closer_to_the_clean_ones(name):
    api = SimulatedAPI(calibrated_victim(), defenses=[RECOVERABLE[name]], device=CPU)
    attack = BESA(denoise="on")
    purchase = attack.buy(api, pool(600), budget=600)
    restored, keep, done = attack.restore(purchase)
    clean = api.clean_features(purchase.images)
    before, after = relative_error(purchase.answers, clean), relative_error(restored, clean)
    assert after < 0.5 * before, (before, after, done)  # measured 20 -> 2.3, 2.8 -> 0.66, 16 -> 1.1


def test_besa_denoises_only_for_losses_that_need_it_and_otherwise_buys_more_images():
    assert not BESA().denoising and BESA(inner=DirectExtraction(loss="infonce")).denoising
    assert BESA(denoise="on").denoising and not BESA(inner=DirectExtraction(loss="infonce"), denoise="off").denoising
    victim = calibrated_victim()
    sizes = {}
    for denoise in ("on", "off"):
        api = SimulatedAPI(victim, defenses=[GaussianNoise(sigma=0.5)], device=CPU)
        purchase = BESA(denoise=denoise).buy(api, pool(300), budget=256)
        sizes[denoise] = (len(purchase.images), len(purchase.second), api.ledger("attacker").images)
    # 24 probe queries (8 images), 232 left; "on" keeps int(0.15 x 232) = 34 of them for second answers
    assert sizes == {"on": (8 + 198, 8 + 34, 256), "off": (8 + 232, 8, 256)}


def test_besa_drops_the_pads_and_trains_on_the_rest():
    victim = calibrated_victim()
    api = SimulatedAPI(victim, defenses=[ConstantPad(victim.dim, 32)], device=CPU)
    result = BESA(inner=INNER).run(api, pool(300), budget=256, account="eve")
    assert result.extra["recovery"]["dropped_dims"] == 32 and result.extra["detected"]["primary"] == "pad"
    assert result.encoder.dim == victim.dim and result.queries == 256


def test_wiener_filter_matches_the_formula_for_white_noise():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(4000, 2, generator=gen) @ torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    mean, w = wiener(clean + torch.randn(4000, 2, generator=gen), 1.0)
    # variances 9 + 1 and 0.25 + 1: gains 1 - 1/10 and 1 - 1/1.25, along the axes
    assert torch.allclose(w, torch.diag(torch.tensor([0.9, 0.2])), atol=0.05)


def test_detection_pieces():
    assert grid_step(torch.tensor([0.1, 0.3, 0.2, 0.1, 0.5, 0.3, 0.2, 0.1])) == pytest.approx(0.1)
    assert grid_step(torch.rand(100, generator=torch.Generator().manual_seed(0))) is None
    sparse = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 4.0]])
    filled, rank = complete(sparse)
    assert rank == 1 and torch.equal(filled[sparse != 0], sparse[sparse != 0])
    assert filled[0, 1].abs() <= 1 and filled[1, 0].abs() <= 2  # below the smallest value the row kept
    same = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    assert detect(same, same, same).kinds == ()


def test_registry_builds_them_with_their_settings():
    assert registry.build("attack", "average:copies=4").copies == 4
    assert registry.build("attack", "average:views=nudge").views == "nudge"
    assert registry.build("attack", "pad-drop:rel_threshold=0.001").rel_threshold == 0.001
    assert registry.build("attack", "coverage-sybil:accounts=4").accounts == 4
    assert registry.build("attack", "besa:probe_images=8").probe_images == 8
    with pytest.raises(registry.OptionError, match="views must be one of repeat, nudge, augment"):
        registry.build("attack", "average:views=twice")


def test_bad_settings_and_budgets_are_refused_in_one_line(api):
    with pytest.raises(ValueError, match="copies must be an int >= 1"):
        QueryAveraging(copies=0)
    with pytest.raises(ValueError, match="cannot pay for a 4-image probe"):
        BESA().buy(api, pool(50), budget=60)
    assert api.ledgers() == {}
    with pytest.raises(ValueError, match="sizes"):
        balanced_clusters(torch.zeros(5, 2), [2, 2])
