import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from histex import geometry
from histex.model import FitConfig, Problem, TargetScaler, context_points, nearest_context, predict, train
from histex.model.predict import prediction_windows
from histex.nn import CrossAttention, HistexNet, ImageOnlyNet


def _lattice(n=8, pitch=12.5):
    return geometry.hex_lattice(n * pitch, n * pitch, pitch=pitch)


def test_context_points_are_spots_and_edge_midpoints():
    xy = _lattice()
    values = np.arange(len(xy), dtype=np.float32)[:, None]
    ctx = context_points(xy, values, pitch=12.5)
    n = len(xy)
    assert np.array_equal(ctx.positions[:n], xy)
    mid = ctx.positions[n:]
    pa, pb = ctx.parents[n:, 0], ctx.parents[n:, 1]
    assert np.allclose(mid, (xy[pa] + xy[pb]) / 2)
    assert np.allclose(ctx.values[n:, 0], (pa + pb) / 2)
    # only neighbours on the lattice are joined (pitch apart), never across a gap
    assert np.allclose(np.linalg.norm(xy[pa] - xy[pb], axis=1), 12.5)


def test_query_at_a_spot_finds_it_and_its_neighbours_by_location():
    xy = _lattice()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(xy))  # spot numbers unrelated to positions
    xy = xy[order]
    ctx = context_points(xy, rng.random((len(xy), 3)), pitch=12.5)
    target = int(np.argmin(np.linalg.norm(xy - xy.mean(0), axis=1)))
    idx = nearest_context(ctx, xy[[target]], k=5)[0]
    assert idx[0] == target
    assert np.allclose(np.linalg.norm(ctx.positions[idx[1:]] - xy[target], axis=1), 6.25)
    # leaving the spot out: nothing made from it remains, the nearest are the midpoints around it (86.6 % of pitch)
    idx = nearest_context(ctx, xy[[target]], k=5, exclude_spots=np.array([target]))[0]
    assert not (ctx.parents[idx] == target).any()
    assert np.allclose(np.linalg.norm(ctx.positions[idx] - xy[target], axis=1), 12.5 * np.sqrt(3) / 2)


def test_cross_attention_scales_by_head_dim():
    ca = CrossAttention(4, 6, dim=32, heads=8)
    assert ca.scale == pytest.approx(4**-0.5)


def test_networks_shapes_and_positive_output():
    torch.manual_seed(0)
    net = HistexNet(20, 15, hidden=(64, 32))
    img, genes = torch.randn(3, 49, 20) * 5, torch.randn(3, 5, 15) * 5
    out, emb = net(img, genes)
    assert out.shape == (3, 49, 15) and emb.shape == (3, 49, 128)
    assert (out > 0).all()
    out2, emb2 = ImageOnlyNet(20, 15, hidden=(64, 32))(img)
    assert out2.shape == (3, 49, 15) and emb2.shape == (3, 49, 32) and (out2 > 0).all()
    # the fused output depends on the gene tokens (the attention really reads them)
    assert not torch.allclose(net(img, genes)[0], net(img, genes + 1)[0])


def test_fusion_dropout_withholds_the_fused_tokens_from_some_windows_at_training_only():
    torch.manual_seed(0)
    net = HistexNet(20, 15, hidden=(32, 32), carry_context=True, fusion_dropout=0.5)
    img, genes = torch.randn(64, 49, 20), torch.randn(64, 5, 15)

    def changed_windows(net) -> torch.Tensor:
        torch.manual_seed(1)  # the same windows are withheld in both passes
        a = net(img, genes)[0]
        torch.manual_seed(1)
        b = net(img, genes + 1)[0]
        return (a - b).abs().amax(dim=(1, 2)) > 1e-6

    net.train()
    withheld = (~changed_windows(net)).sum().item()
    assert 20 <= withheld <= 44  # about half of 64: those windows see only their image features
    net.eval()
    assert changed_windows(net).all()  # prediction always reads the context
    with_skip = HistexNet(20, 15, hidden=(32, 32), context_skip=True, fusion_dropout=0.5).train()
    assert changed_windows(with_skip).all()  # the context mean is never withheld
    with pytest.raises(ValueError, match="fusion_dropout"):
        HistexNet(20, 15, fusion_dropout=1.0)


def test_mlp_nonlinearity_is_gelu_without_layer_norm():
    net = HistexNet(8, 4, hidden=(16, 16))
    assert [type(m).__name__ for m in net.mlp] == ["Linear", "GELU", "Linear", "GELU"]


def test_paper_mlp_is_linear():
    net = HistexNet(8, 4, hidden=(16, 16), nonlinear=False)
    assert all(isinstance(m, torch.nn.Linear) for m in net.mlp)


def test_target_scaler_round_trip():
    counts = np.array([[0, 10], [5, 30], [10, 20]], dtype=float)
    for kind in ("minmax", "log1p"):
        s = TargetScaler.fit(counts, kind)
        y = s.transform(counts)
        assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
        assert np.allclose(s.to_counts_per_bin(y, 37.0) * 37, counts, rtol=1e-5)


def test_prediction_windows_cover_tissue():
    tissue = np.zeros((30, 40), bool)
    tissue[3:25, 5:33] = True
    for stride in (7, 3):
        anchors = prediction_windows(tissue, 7, stride)
        cover = np.zeros(tissue.shape, int)
        for r, c in anchors:
            cover[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] += 1
        assert (cover[tissue] >= 1).all()
        if stride == 7:
            assert (cover[tissue] == 1).all()


def _toy_problem(seed=0, use_context=True):
    """A feature map whose channel 0 marks where a gene is expressed, and spots that sum it."""
    rng = np.random.default_rng(seed)
    rows = cols = 100
    truth = np.zeros((rows, cols), np.float32)
    for _ in range(80):
        r, c = rng.integers(3, rows - 3, 2)
        truth[r - 2 : r + 2, c - 2 : c + 2] = 1.0
    features = np.stack([truth * 2 - 1, rng.normal(size=(rows, cols)).astype(np.float32)], axis=-1)
    spot_rc = geometry.hex_lattice(96, 96, pitch=12.5, offset=(4, 4))[:, ::-1]
    anchor, masks = geometry.disk_masks(spot_rc, 27.5 / 8, 7)
    rr = anchor[:, None, 0] + geometry.window_offsets(7)[None, :, 0]
    cc = anchor[:, None, 1] + geometry.window_offsets(7)[None, :, 1]
    spot_values = (truth[rr.clip(0, rows - 1), cc.clip(0, cols - 1)] * masks).sum(1, keepdims=True)
    scaler = TargetScaler.fit(spot_values)
    y = scaler.transform(spot_values)
    ctx = context_points(spot_rc, y, pitch=12.5) if use_context else None
    problem = Problem(
        features=features,
        tissue=np.ones((rows, cols), bool),
        spot_rc=spot_rc,
        radius_bins=27.5 / 8,
        targets=y,
        context=ctx,
    )
    return problem, truth


def test_training_loss_decreases_and_is_reproducible():
    problem, truth = _toy_problem()
    config = FitConfig(
        epochs=12,
        n_states=2,
        holdout=0,
        hidden=(32, 32),
        lr=1e-3,
        batch_size=8,
        seed=3,
        device="cpu",
        show_progress=False,
    )
    models, history = train(problem, config)
    assert history.loss.shape == (2, 12) and history.validation.shape == (2, 0)
    assert list(history.best_epoch) == [12, 12]
    history = history.loss
    assert (history[:, -5:].mean(1) < 0.5 * history[:, :3].mean(1)).all()
    pred = predict(models, problem, config)
    assert pred.mean.shape == (10000, 1) and pred.spread.shape == (10000, 1)
    assert (pred.spread >= 0).all() and pred.spread.max() > 0
    # the image marks the expressed bins: the prediction must find them below spot resolution, far better than
    # the nearest spot's value (r = 0.16 here)
    r = np.corrcoef(pred.mean[:, 0], truth[pred.rows, pred.cols])[0, 1]
    bins_rc = np.stack([pred.rows + 0.5, pred.cols + 0.5], axis=1)
    nearest_spot = problem.targets[cKDTree(problem.spot_rc).query(bins_rc)[1], 0]
    assert r > np.corrcoef(nearest_spot, truth[pred.rows, pred.cols])[0, 1] + 0.2
    models2, history2 = train(problem, config)
    assert np.array_equal(history, history2.loss)
    assert np.array_equal(predict(models2, problem, config).mean, pred.mean)


def test_states_trained_together_equal_states_trained_alone():
    from histex.model.ensemble import Ensemble

    problem, _ = _toy_problem()
    config = FitConfig(
        epochs=3,
        n_states=2,
        holdout=0,
        hidden=(16,),
        lr=1e-3,
        batch_size=16,
        seed=5,
        precision="float32",
        show_progress=False,
    )
    together, history = train(problem, config)
    assert isinstance(together, Ensemble) and together.n_states == 2
    for state in range(2):
        alone, alone_history = train(problem, replace(config, n_states=1, seed=5 + state))
        np.testing.assert_allclose(history.loss[state], alone_history.loss[0], rtol=1e-4)
        for name, value in alone.state_dicts()[0].items():
            np.testing.assert_allclose(together.state_dicts()[state][name], value, atol=2e-4)  # rounding only


def test_bfloat16_forward_casts_weights_and_inputs_not_parameters():
    from histex.model.ensemble import Ensemble, compute_dtype

    torch.manual_seed(0)
    ensemble = Ensemble([HistexNet(20, 10, hidden=(16,)) for _ in range(2)])
    tokens, genes = torch.randn(2, 3, 49, 20), torch.rand(2, 3, 5, 10)
    full, _ = ensemble(tokens, genes)
    half, _ = ensemble(tokens, genes, dtype=torch.bfloat16)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert 0 < (half.float() - full).abs().max() < 0.05
    half.float().sum().backward()  # the gradient reaches the float32 parameters
    assert all(p.dtype == torch.float32 and p.grad is not None for p in ensemble.parameters())
    assert compute_dtype("float32", torch.device("cpu")) is None
    assert compute_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert compute_dtype("auto", torch.device("mps")) is None
    with pytest.raises(ValueError, match="precision"):
        compute_dtype("half", torch.device("cpu"))


@pytest.mark.slow
def test_training_stops_on_held_out_spots_and_keeps_the_best_epoch():
    from histex.model.fit import SpotLoss, _held_out_loss, holdout_split

    problem, _ = _toy_problem()
    config = FitConfig(
        epochs=300,
        n_states=2,
        holdout=0.2,
        patience=4,
        hidden=(32, 32),
        lr=3e-3,
        batch_size=8,
        seed=1,
        precision="float32",
        show_progress=False,
    )
    ensemble, history = train(problem, config)
    n = history.epochs
    assert n < 300 and history.validation.shape == history.loss.shape == (2, n)
    assert n - history.best_epoch.max() == config.patience  # stopped once neither state improved for 4 epochs
    for state in range(2):
        best = history.best_epoch[state]
        assert history.validation[state, best - 1] == history.validation[state].min()
    # the ensemble keeps each state's best epoch: its held-out loss is the one recorded there
    held = np.stack(holdout_split(len(problem.targets), 2, 0.2, seed=1))
    loss = _held_out_loss(ensemble, SpotLoss(problem, config, torch.device("cpu")), held, 8)
    np.testing.assert_allclose(loss, history.validation[[0, 1], history.best_epoch - 1], rtol=1e-5)


def test_holdout_split_is_disjoint_while_spots_last():
    from histex.model.fit import holdout_split

    held = holdout_split(100, 5, 0.1, seed=0)
    assert [len(h) for h in held] == [10] * 5 and len(np.unique(np.concatenate(held))) == 50
    wrapped = holdout_split(12, 5, 0.25, seed=0)  # 3 each: 15 > 12, so the slices wrap around
    assert [len(h) for h in wrapped] == [3] * 5 and len(np.unique(np.concatenate(wrapped))) == 12
    assert [len(h) for h in holdout_split(100, 3, 0, seed=0)] == [0, 0, 0]
    with pytest.raises(ValueError, match="holdout"):
        holdout_split(100, 3, 1.0, seed=0)


def test_prediction_streams_final_bins_in_row_bands():
    from histex.model import predict_blocks

    problem, _ = _toy_problem()
    config = FitConfig(
        epochs=1, n_states=2, hidden=(16,), batch_size=16, stride=3, predict_batch_size=40, show_progress=False
    )
    ensemble, _ = train(problem, config)
    whole = predict(ensemble, problem, config)
    blocks = list(predict_blocks(ensemble, problem, config))
    n_bins = len(whole.rows)
    assert blocks[0].start == 0 and blocks[-1].stop == n_bins
    assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
    assert len(blocks) > 10 and max(b.stop - b.start for b in blocks) < 0.1 * n_bins  # never the slide at once
    np.testing.assert_array_equal(np.concatenate([b.mean for b in blocks]), whole.mean)
    np.testing.assert_array_equal(np.concatenate([b.spread for b in blocks]), whole.spread)
    # a bigger batch gives the same bins: every window's output is added before its bins are final
    wide = predict(ensemble, problem, replace(config, predict_batch_size=1000))
    np.testing.assert_allclose(wide.mean, whole.mean, rtol=1e-5, atol=1e-6)
    # the transform is applied block by block, into the same arrays
    doubled = predict(ensemble, problem, config, transform=lambda m, s: (2 * m, 3 * s))
    np.testing.assert_allclose(doubled.mean, 2 * whole.mean, rtol=1e-6)
    np.testing.assert_allclose(doubled.spread, 3 * whole.spread, rtol=1e-6)


def test_image_only_network_finds_the_marked_bins():
    problem, truth = _toy_problem(use_context=False)
    config = FitConfig(
        use_context=False, epochs=12, n_states=1, hidden=(32, 32), lr=1e-3, batch_size=8, seed=3, show_progress=False
    )
    pred = predict(train(problem, config)[0], problem, config)
    assert np.corrcoef(pred.mean[:, 0], truth[pred.rows, pred.cols])[0, 1] > 0.9


def test_cuda_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from histex.model import resolve_device

    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_features_are_standardised_over_tissue_in_one_copy():
    import dask.array as da

    from histex.model.features import positions, standardised_with_position

    rng = np.random.default_rng(0)
    features = rng.normal(3, 2, size=(6, 40, 50)).astype(np.float32)
    features[2] = 7.0  # a constant channel is only centred
    tissue = rng.random((40, 50)) > 0.4
    out = standardised_with_position(features, tissue)
    assert out.shape == (40, 50, 8) and out.dtype == np.float32  # one token per bin, channel last
    out = out.transpose(2, 0, 1)
    stacked = np.concatenate([features, positions((40, 50))])
    tissue_values = stacked[:, tissue].astype(np.float64)  # statistics in float64, as the function takes them
    mean, std = tissue_values.mean(axis=1), tissue_values.std(axis=1)
    expected = (stacked - mean[:, None, None]) / np.where(std > 1e-8, std, 1.0)[:, None, None]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    inside = out[:, tissue]
    np.testing.assert_allclose(inside.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.delete(inside.std(axis=1), 2), 1, atol=1e-5)
    assert np.all(out[2] == 0)
    # the last two channels are the standardised bin positions, row then column
    assert np.corrcoef(out[6].ravel(), positions((40, 50))[0].ravel())[0, 1] > 0.999
    lazy = standardised_with_position(da.from_array(features, chunks=(1, 40, 50)), tissue)
    np.testing.assert_array_equal(lazy.transpose(2, 0, 1), out)


def test_feature_components_are_principal_axes_fitted_on_tissue():
    from histex.model.features import standardised_with_position

    rng = np.random.default_rng(1)
    latent = rng.normal(size=(3, 60, 70))
    features = np.einsum("fk,krc->frc", rng.normal(size=(40, 3)), latent) + 0.05 * rng.normal(size=(40, 60, 70))
    features = features.astype(np.float32)
    tissue = np.zeros((60, 70), bool)
    tissue[5:50, 10:65] = True
    full = standardised_with_position(features, tissue)
    reduced = standardised_with_position(features, tissue, n_components=3)
    assert reduced.shape == (60, 70, 5)
    np.testing.assert_array_equal(reduced[..., 3:], full[..., 40:])  # the positions are kept as they are
    # three axes hold the rank-3 signal: the tokens keep their norm, less the noise
    kept = np.linalg.norm(reduced[tissue][:, :3], axis=1) / np.linalg.norm(full[tissue][:, :40], axis=1)
    assert np.median(kept) > 0.99 and kept.max() <= 1 + 1e-5
    assert np.square(reduced[tissue][:, :3]).sum() > 0.99 * np.square(full[tissue][:, :40]).sum()
    # uncorrelated components over tissue, in order of variance
    comps = reduced[tissue][:, :3].astype(np.float64)
    cov = np.cov(comps.T)
    assert np.all(np.diff(np.diag(cov)) < 0)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3 * cov[0, 0])
    # every axis: a full rotation keeps every token's norm
    rotated = standardised_with_position(features, tissue, n_components=40)
    np.testing.assert_allclose(
        np.linalg.norm(rotated[..., :40], axis=-1), np.linalg.norm(full[..., :40], axis=-1), rtol=1e-4
    )
    with pytest.raises(ValueError, match="n_components"):
        standardised_with_position(features, tissue, n_components=41)


def test_the_written_out_softmax_is_torchs():
    from histex.nn._attention import _softmax

    torch.manual_seed(0)
    for last in (1, 5, 49):
        scores = torch.randn(3, 8, 49, last) * 30  # large scores: the maximum is subtracted, nothing overflows
        assert torch.allclose(_softmax(scores), torch.softmax(scores, dim=-1), atol=1e-6)
    scores = torch.randn(4, 5, requires_grad=True)
    (grad,) = torch.autograd.grad((_softmax(scores) * torch.arange(5.0)).sum(), scores)
    (expected,) = torch.autograd.grad((torch.softmax(scores, -1) * torch.arange(5.0)).sum(), scores)
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize(("queries", "keys"), [(49, 5), (5, 49), (7, 7), (3, 11)])
def test_prediction_folds_the_attention_into_its_few_tokens_with_the_same_result(queries, keys):
    """Without autograd, CrossAttention folds the projections of its many tokens into its few: the same function,
    for plain and stacked weights, both ways round and at equal counts."""
    from torch.func import functional_call, stack_module_state

    torch.manual_seed(0)
    attention = CrossAttention(12, 9, dim=32, heads=4)
    q, context = torch.randn(6, queries, 12) * 3, torch.randn(6, keys, 9) * 3
    expected = attention(q, context)  # with autograd: the projections, then the attention
    with torch.no_grad():
        folded = attention(q, context)
    assert (folded - expected).abs().max() < 1e-5
    assert (folded - expected).abs().max() > 0 or queries == keys  # it did compute otherwise

    layers = [attention, CrossAttention(12, 9, dim=32, heads=4)]
    stacked, _ = stack_module_state(layers)
    states_q, states_context = torch.randn(2, 6, queries, 12), torch.randn(2, 6, keys, 9)
    with torch.no_grad():
        together = functional_call(attention, stacked, (states_q, states_context))
    for i, layer in enumerate(layers):
        assert (together[i] - layer(states_q[i], states_context[i])).abs().max() < 1e-5


def test_stacked_linear_is_each_states_linear_exactly():
    from histex.nn._stacked import linear

    torch.manual_seed(0)
    weight, bias, x = torch.randn(3, 7, 5), torch.randn(3, 7), torch.randn(3, 4, 6, 5)
    out = linear(x, weight, bias)
    assert out.shape == (3, 4, 6, 7)
    for i in range(3):
        assert torch.equal(out[i], torch.nn.functional.linear(x[i], weight[i], bias[i]))
        assert torch.equal(linear(x, weight, None)[i], x[i] @ weight[i].T)
    assert torch.equal(linear(x[0], weight[0], bias[0]), torch.nn.functional.linear(x[0], weight[0], bias[0]))


@pytest.mark.parametrize("network", ["histex", "image_only"])
def test_ensemble_predicts_stacked_as_it_trains_vmapped(network):
    """Without autograd the states run as one stacked computation, not vmapped: the same outputs, shared or per-state
    inputs, with or without gene tokens, expression or hidden layer."""
    from histex.model.ensemble import Ensemble

    torch.manual_seed(0)
    make = {
        "histex": lambda: HistexNet(20, 10, hidden=(16, 8), context_skip=True, carry_context=True),
        "image_only": lambda: ImageOnlyNet(20, 10, hidden=(16, 8)),
    }[network]
    ensemble = Ensemble([make() for _ in range(3)]).eval()
    tokens, genes = torch.randn(4, 49, 20), torch.rand(4, 5, 10)
    per_state = torch.randn(3, 4, 49, 20), torch.rand(3, 4, 5, 10)
    cases = [((tokens, genes), True), (per_state, False)]
    if network == "histex":
        cases.append(((tokens, None), True))  # an H&E-only slide
    for (t, g), shared in cases:
        for hidden in (False, True):
            vmapped = ensemble(t, g, shared=shared, hidden=hidden)  # autograd on: vmapped, as in training
            with torch.no_grad():
                stacked = ensemble(t, g, shared=shared, hidden=hidden)
            for a, b in zip(vmapped, stacked, strict=True):
                assert a.shape == b.shape
                assert (a.detach() - b).abs().max() < 1e-5
