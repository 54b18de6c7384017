"""The learning rules against their references, on every registered model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dflearn
from dflearn import models
from dflearn.heads import ConvHead
from dflearn.taps import Tap

# Small settings for each registered model: per-sample input shape and options.
SMALL = {
    "mlp": dict(input_shape=(1, 6, 6), num_classes=5, hidden=(16, 12)),
    "convnet": dict(input_shape=(3, 16, 16), num_classes=5, channels=(8, 8, 16), fc_width=32),
    "convnet-bn": dict(input_shape=(3, 16, 16), num_classes=5, channels=(8, 8, 16), fc_width=32),
    "resnet18": dict(input_shape=(3, 8, 8), num_classes=5),
}
# ResNet-18 keeps its full width: fewer steps (it fits a batch fast).
STEPS = {"resnet18": 6}
# Every rule and schedule; rule name -> create_rule options.
VARIANTS = [
    ("bp", {}),
    ("dfa", {}),
    ("dfa", {"feedback": "conv"}),
    ("las", {}),
    ("las", {"schedule": "two-pass"}),
    ("ltas", {}),
    ("ltas", {"schedule": "two-pass"}),
    ("shallow", {}),
]
VARIANT_IDS = [name + "".join(f"-{v}" for v in o.values()) for name, o in VARIANTS]


def small_model(name, seed=0):
    torch.manual_seed(seed)
    return models.create(name, **SMALL[name])


def batch(model, n=8, seed=1):
    """Random inputs labelled by a random linear teacher (a learnable task)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.input_shape, generator=g)
    teacher = torch.randn(x[0].numel(), model.num_classes, generator=g)
    return x, (x.flatten(1) @ teacher).argmax(1)


def deep_linear(dtype=torch.float64):
    torch.manual_seed(0)
    return models.create("mlp", sizes=[7, 9, 8, 6, 4], activation="identity").to(dtype)


def bp_tap_grads(model, x, y):
    """dL/dh at every tap by plain autograd, in call order."""
    hs = []

    def keep(module, inputs, output):
        output.retain_grad()
        hs.append(output)

    handles = [t.register_forward_hook(keep) for _, t in dflearn.named_taps(model)]
    F.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    return [h.grad for h in hs]


# ------------------------------------------------------------- references


def test_bp_equals_autograd_float64():
    model = small_model("convnet-bn").double()
    reference = copy.deepcopy(model)
    x, y = batch(model)
    x = x.double()
    rule = dflearn.create_rule("bp", model)
    rule.step(x, y, torch.optim.SGD(rule.parameters(), lr=0.0))
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-10, rtol=0), name


def test_las_product_heads_equal_bp_on_deep_linear_net():
    model = deep_linear()
    x, y = batch(model)
    x = x.double()
    rule = dflearn.create_rule("las", model)
    assert rule.head_init == "product"
    signals = list(rule.teaching_signals(x, y).values())
    truth = bp_tap_grads(copy.deepcopy(model), x, y)
    assert len(signals) == len(truth) == 3
    for s, g in zip(signals, truth):
        cos = F.cosine_similarity(s.flatten(1), g.flatten(1)).min()
        assert cos > 0.9999
    assert max(rule.alignment(x, y).values()) < 1e-5


def test_dfa_signal_is_e_times_b():
    model = deep_linear()
    x, y = batch(model)
    x = x.double()
    rule = dflearn.create_rule("dfa", model)
    e = (F.softmax(model(x), 1) - F.one_hot(y, 4)) / len(y)
    for s, head in zip(rule.teaching_signals(x, y).values(), rule.heads):
        torch.testing.assert_close(s, e @ head.weight, atol=1e-15, rtol=0)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_conv_head_vjp_matches_autograd(pool):
    g = torch.Generator().manual_seed(0)
    head = ConvHead(4, 3, 3, pool, trainable=False, generator=g).double()
    h = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    e = torch.randn(2, 3, dtype=torch.float64)
    (expected,) = torch.autograd.grad(head(h), h, e)
    torch.testing.assert_close(head.vjp(h.detach(), e), expected, atol=1e-12, rtol=0)


def test_angle_of_identical_vectors_is_exactly_zero():
    v = torch.randn(4, 1000)
    assert dflearn.angle(v, v).abs().max().item() == 0.0
    assert dflearn.angle(v, -v).min().item() == pytest.approx(180.0)
    # Parallel but not identical: float32 rounding only (acos would read ~0.02).
    assert dflearn.angle(v, 3 * v).max().item() < 1e-4


def test_las_beats_dfa_alignment_after_training():
    # The paper's first claim in miniature: trained heads align better.
    angles = {}
    for name in ("dfa", "las"):
        model = models.create("mlp", sizes=[20, 32, 32, 32, 4])
        rule = dflearn.create_rule(name, model, seed=0)
        opt = torch.optim.Adam(rule.parameters(), lr=3e-3)
        x, y = batch(model, n=64)
        for _ in range(60):
            rule.step(x, y, opt)
        angles[name] = list(rule.alignment(x, y).values())[:-1]
    assert max(angles["las"]) < min(angles["dfa"])


# ------------------------------------------------------- feedback storage


def test_dfa_feedback_fixed_las_heads_learn():
    x, y = batch(small_model("mlp"))
    for name, changes in (("dfa", False), ("las", True)):
        rule = dflearn.create_rule(name, small_model("mlp"))
        before = copy.deepcopy(rule.heads.state_dict())
        opt = torch.optim.Adam(rule.parameters(), lr=1e-2)
        for _ in range(3):
            rule.step(x, y, opt)
        same = [torch.equal(before[k], v) for k, v in rule.heads.state_dict().items()]
        assert same and (not any(same) if changes else all(same))


def test_dfa_feedback_are_buffers_drawn_from_seed():
    a = dflearn.create_rule("dfa", small_model("mlp"), seed=3)
    b = dflearn.create_rule("dfa", small_model("mlp"), seed=3)
    c = dflearn.create_rule("dfa", small_model("mlp"), seed=4)
    assert not list(a.heads.parameters()) and len(list(a.heads.buffers())) == 2
    assert torch.equal(a.heads[0].weight, b.heads[0].weight)
    assert not torch.equal(a.heads[0].weight, c.heads[0].weight)


# ------------------------------------------- every rule on every model


def output_block(rule):
    """Parameters above the top tap (the only ones shallow trains)."""
    model, top = rule.model, rule.tap_names[-1]
    seen, params = False, set()
    for name, module in model.named_modules():
        if name == top:
            seen = True
        elif seen and not any(True for _ in module.children()):
            params |= {id(p) for p in module.parameters(recurse=False)}
    return params


@pytest.mark.parametrize("model_name", sorted(SMALL))
@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_every_rule_trains_every_model(model_name, rule_name, options):
    assert sorted(SMALL) == models.list_models(), "add the new model to SMALL"
    rule = dflearn.create_rule(rule_name, small_model(model_name), **options)
    opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
    x, y = batch(rule.model, n=16)
    before = {n: p.detach().clone() for n, p in rule.named_parameters()}
    first, _ = rule.step(x, y, opt)

    # One step moves every trainable parameter (shallow: the output block only).
    top = output_block(rule)
    for name, p in rule.named_parameters():
        moved = not torch.equal(before[name], p)
        expected = rule_name != "shallow" or id(p) in top
        assert moved == expected, name
        assert torch.isfinite(p).all(), name

    # And the loss falls on a fixed batch. (Slowly for DFA on conv nets,
    # whose random conv feedback aligns poorly: the paper's motivation.)
    losses = [rule.step(x, y, opt)[0] for _ in range(STEPS.get(model_name, 30))]
    assert all(torch.isfinite(v) for v in losses)
    assert min(losses[-5:]) < first


def test_every_rule_is_registered_and_tested():
    assert sorted({name for name, _ in VARIANTS}) == dflearn.list_rules()


# ------------------------------------------------------------- edge cases


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_batch_of_one_short_batch_and_eval_between(rule_name, options):
    rule = dflearn.create_rule(rule_name, small_model("convnet-bn"), **options)
    opt = torch.optim.SGD(rule.parameters(), lr=0.01)
    x, y = batch(rule.model, n=11)
    for sl in (slice(0, 8), slice(8, 11), slice(0, 1)):
        loss, out = rule.step(x[sl], y[sl], opt)
        assert out.shape == (sl.stop - sl.start, 5) and torch.isfinite(loss)
        rule.eval()
        with torch.no_grad():
            assert rule(x[:2]).shape == (2, 5)
        rule.train()


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_frozen_first_block_and_bias_free(rule_name, options):
    model = models.create("mlp", sizes=[10, 16, 16, 3], bias=False)
    model[1].weight.requires_grad_(False)
    frozen = model[1].weight.clone()
    rule = dflearn.create_rule(rule_name, model, **options)
    opt = torch.optim.Adam([p for p in rule.parameters() if p.requires_grad], lr=1e-2)
    x, y = batch(model)
    loss, _ = rule.step(x, y, opt)
    assert torch.isfinite(loss) and torch.equal(model[1].weight, frozen)


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_running_stats_move_once_per_step(rule_name, options):
    rule = dflearn.create_rule(rule_name, small_model("convnet-bn"), **options)
    reference = copy.deepcopy(rule.model).train()
    x, y = batch(rule.model)
    with torch.no_grad():
        reference(x)
    rule.step(x, y, torch.optim.Adam(rule.parameters()))
    for (name, a), b in zip(rule.model.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------ state


@pytest.mark.parametrize("rule_name", ["dfa", "las", "ltas"])
def test_state_dict_round_trip_bit_for_bit(rule_name):
    rule = dflearn.create_rule(rule_name, small_model("convnet"), seed=1)
    opt = torch.optim.Adam(rule.parameters(), lr=1e-2)
    rule.step(*batch(rule.model), opt)
    fresh = dflearn.create_rule(rule_name, small_model("convnet", seed=5), seed=2)
    fresh.load_state_dict(rule.state_dict())
    assert any(k.startswith("heads.") for k in rule.state_dict())
    for k, v in rule.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_moved_to_float64_keeps_working(rule_name, options):
    rule = dflearn.create_rule(rule_name, small_model("convnet"), **options)
    rule.to(torch.float64)
    x, y = batch(rule.model)
    loss, out = rule.step(x.double(), y, torch.optim.Adam(rule.parameters()))
    assert out.dtype == torch.float64 and torch.isfinite(loss)
    assert all(b.dtype == torch.float64 for b in rule.heads.buffers())


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_alignment_leaves_state_untouched(rule_name, options):
    small = small_model("convnet-bn")
    model = nn.Sequential(*small[:-1], nn.Dropout(0.5), small[-1])  # dropout draws RNG
    model.input_shape, model.num_classes = small.input_shape, small.num_classes
    rule = dflearn.create_rule(rule_name, model, **options)
    opt = torch.optim.Adam(rule.parameters())
    x, y = batch(rule.model)
    rule.step(x, y, opt)
    state = copy.deepcopy(rule.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in rule.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()

    taps = rule.alignment(x, y)
    layers = rule.alignment(x, y, per_layer=True)

    assert set(taps) == set(rule.tap_names) and layers
    for k, v in rule.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(rule.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert torch.equal(torch.get_rng_state(), rng)
    assert str(opt.state_dict()) == str(opt_state)
    if rule_name == "bp":
        assert all(a == 0.0 for a in [*taps.values(), *layers.values()])


# ----------------------------------------------------------- plain use


def test_inference_is_plain():
    model = small_model("convnet-bn")
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, Tap):
            plain[int(name)] = nn.Identity()
    rule = dflearn.create_rule("las", model).eval()
    x, _ = batch(model)
    with torch.no_grad():
        out = rule(x)
    assert out.grad_fn is None
    assert torch.equal(out, plain.eval()(x))
    assert all(t._capture is None for _, t in dflearn.named_taps(model))


def test_refusals_name_the_way_out():
    bare = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    for name in ("dfa", "las", "ltas", "shallow"):
        with pytest.raises(ValueError, match="Tap"):
            dflearn.create_rule(name, bare)
    dflearn.create_rule("bp", bare)
    with pytest.raises(KeyError, match="bp, dfa, las, ltas, shallow"):
        dflearn.create_rule("fa", bare)
    with pytest.raises(TypeError, match="options"):
        dflearn.create_rule("dfa", small_model("mlp"), schedule="two-pass")
    with pytest.raises(ValueError, match="schedule"):
        dflearn.create_rule("las", small_model("mlp"), schedule="fast")
    with pytest.raises(ValueError, match="product"):
        dflearn.create_rule("las", small_model("convnet"), head_init="product")
    with pytest.raises(ValueError, match="num_classes"):
        dflearn.create_rule("dfa", small_model("mlp"), num_classes=10)


def test_custom_model_needs_input_shape_for_feedback():
    body = dflearn.insert_taps(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    assert sum(isinstance(m, Tap) for m in body) == 1
    with pytest.raises(ValueError, match="input_shape"):
        dflearn.create_rule("dfa", body)
    rule = dflearn.create_rule("dfa", body, input_shape=(4,))
    assert rule.num_classes == 3 and rule.tap_shapes == [torch.Size([8])]


# ---------------------------------------------------------- no wasted work


@pytest.mark.parametrize(("rule_name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_cut_taps_compute_no_input_gradient(rule_name, options, monkeypatch):
    model = small_model("mlp")
    rule = dflearn.create_rule(rule_name, model, **options)
    needs_grad = []
    for i, module in enumerate(model):
        if isinstance(module, Tap):
            # The block above a tap sees its input: grad-free when the tap is cut.
            model[i + 1].register_forward_pre_hook(
                lambda m, args: needs_grad.append(args[0].requires_grad)
            )
    calls = []
    backward = torch.autograd.backward
    monkeypatch.setattr(
        torch.autograd, "backward", lambda *a, **k: calls.append(1) or backward(*a, **k)
    )
    rule.step(*batch(model), torch.optim.SGD(rule.parameters(), lr=0.1))

    whole = {"bp": [True, True], "shallow": [False, False], "dfa": [False, False]}
    assert needs_grad[-2:] == whole.get(rule_name, [False, True])
    # One backward call carries every signal (two-pass adds the heads' own).
    assert len(calls) == (2 if options.get("schedule") == "two-pass" else 1)
