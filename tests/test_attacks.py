import pytest
import torch
import torch.nn.functional as F

from rtlib import attacks
from rtlib.config import ConfigError

from .conftest import build_tiny


@pytest.fixture(scope="module")
def fixed():
    """A tiny model, 256 images and the model's own labels (clean accuracy 1)."""
    model = build_tiny(seed=4).eval()
    images = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = attacks.predict(model, images)
    return model, images, labels


def plain_pgd(model, x, y, eps, alpha, steps, seed=123):
    """Madry et al.'s L-infinity PGD with a random start, written out in plain torch."""
    g = torch.Generator().manual_seed(seed)
    adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


EPS = 0.5 / 255  # chosen so that about half the images of the fixed model survive


def test_perturbation_stays_within_eps_and_the_image_range(fixed):
    model, images, labels = fixed
    for eps in (0.5 / 255, 1 / 255, 8 / 255):
        adv = attacks.pgd(model, images[:64], labels[:64], eps=eps)
        assert (adv - images[:64]).abs().max().item() <= eps + 1e-6
        assert adv.min().item() >= 0 and adv.max().item() <= 1
        assert not torch.equal(adv, images[:64])  # it did perturb


def test_eps_zero_gives_exactly_the_clean_accuracy(fixed):
    model, images, _ = fixed
    labels = torch.arange(len(images)) % 5  # not the model's own: clean accuracy ~0.2
    clean = (attacks.predict(model, images) == labels).float().mean().item()
    assert attacks.robust_accuracy(model, images, labels, eps=0) == clean
    assert torch.equal(attacks.pgd(model, images, labels, eps=0), images)


def test_robust_accuracy_never_exceeds_clean_accuracy(fixed):
    model, images, _ = fixed
    labels = torch.arange(len(images)) % 5
    clean = (attacks.predict(model, images) == labels).float().mean().item()
    for eps in (0.25 / 255, 1 / 255, 4 / 255):
        assert attacks.robust_accuracy(model, images, labels, eps=eps) <= clean


def test_agrees_with_a_plain_torch_pgd(fixed):
    model, images, labels = fixed
    ours = attacks.robust_accuracy(model, images, labels, eps=EPS, steps=15)
    adv = plain_pgd(model, images, labels, EPS, EPS / 4, 15)
    theirs = (attacks.predict(model, adv) == labels).float().mean().item()
    assert 0.1 < theirs < 0.9, "the budget must leave the comparison informative"
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


def test_apgd_is_at_least_as_strong_as_pgd_on_average(fixed):
    model, images, labels = fixed
    budgets = (0.25 / 255, 0.5 / 255, 1 / 255)
    pgd = [attacks.robust_accuracy(model, images, labels, eps=e, steps=10) for e in budgets]
    apgd = [attacks.robust_accuracy(model, images, labels, eps=e, steps=10, attack="apgd")
            for e in budgets]
    assert sum(apgd) / 3 <= sum(pgd) / 3 + 0.005, (pgd, apgd)


def test_eps_sweep_is_monotone_and_matches_single_budgets(fixed):
    model, images, labels = fixed
    sweep = attacks.eps_sweep(model, images, labels, [1 / 255, 0, 0.5 / 255, 0.25 / 255])
    values = [sweep[e] for e in sorted(sweep)]
    assert values[0] == 1.0 and values == sorted(values, reverse=True)
    assert sweep[0.25 / 255] == attacks.robust_accuracy(model, images, labels, eps=0.25 / 255)


def test_attack_leaves_model_mode_and_global_rng_alone(fixed):
    model, images, labels = fixed
    model.train()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    attacks.robust_accuracy(model, images[:32], labels[:32], eps=1 / 255)
    assert torch.equal(torch.rand(3), expected)
    assert model.training
    model.eval()


@pytest.mark.parametrize("kwargs,field", [
    ({"eps": -1 / 255}, "eps"), ({"eps": 2.0}, "eps"), ({"steps": 0}, "steps"),
    ({"attack": "fgsm"}, "attack"), ({"step_size": 0.0}, "step_size"),
])
def test_bad_attack_parameters(fixed, kwargs, field):
    model, images, labels = fixed
    with pytest.raises(ConfigError) as err:
        attacks.robust_accuracy(model, images[:4], labels[:4], **kwargs)
    assert err.value.field == field


def test_early_exit_pgd_is_torchattacks_pgd_that_stops_at_the_first_fooling_iterate(fixed):
    """Same random start and steps as torchattacks' PGD: never more robust than its final
    iterate, the same within 1 point on a fixed model, the images it spares are the ones
    torchattacks spares, and it does less work."""
    model, images, labels = fixed
    for eps in (EPS, 2 * EPS):
        final = attacks.robust_mask(model, images, labels, eps=eps, steps=10, attack="pgd")
        early = attacks.robust_mask(model, images, labels, eps=eps, steps=10,
                                    attack="pgd_early")
        assert early.sum() <= final.sum()
        assert (final.float().mean() - early.float().mean()).abs() <= 0.01
        assert (early & ~final).sum() <= 1  # an image it spares, torchattacks spares too
    attack = attacks.EarlyExitPGD(model, EPS, EPS / 4, 10)
    torch.manual_seed(0)
    adv = attack(images, labels)
    assert (adv - images).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert attack.work < 10 * len(images)  # fooled images were dropped
    fooled = attacks.predict(model, adv) != labels
    assert 0.1 < fooled.float().mean() < 0.9


def test_early_exit_pgd_follows_torchattacks_step_for_step_on_a_robust_image(fixed):
    """With an attack too weak to fool anything, every image runs all steps: the iterates are
    torchattacks' PGD's, from the same random start."""
    import torchattacks

    model, images, labels = fixed
    x, y = images[:32], labels[:32]
    eps = 1e-4
    torch.manual_seed(7)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=5, random_start=True)(x, y)
    torch.manual_seed(7)
    attack = attacks.EarlyExitPGD(model, eps, eps / 4, 5)
    ours = attack(x, y)
    assert attack.work == 5 * len(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
