"""histex.tl.enrich: gene set enrichment per domain and per bin, from dicts, GMT files and networks."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import compartment_markers

import histex as hx
from histex import gene_sets as gs
from histex.expression import log_normalised


@pytest.fixture(scope="module")
def labelled():
    """The toy's ground-truth bins in labelled domains, and gene sets: one planted per compartment, two decoys."""
    sdata = hx.datasets.toy(size_um=800, n_genes=40, seed=0)
    truth = sdata.tables["truth"]
    markers = compartment_markers(truth)
    hx.tl.annotate(sdata, "truth", n_domains=6, use="expression", markers=markers)
    genes = truth.var_names.tolist()
    rng = np.random.default_rng(1)
    sets = {
        # Planted: most of a compartment's markers, diluted by genes expressed everywhere.
        "IMMUNE RESPONSE": [*markers["Imm"][:4], "Hk_01"],
        "STROMAL ECM": [*markers["Str"][:4], "Hk_02"],
        "TUMOUR PROLIFERATION": [*markers["Tum"][:4], "Grad_01"],
        "EPITHELIAL POLARITY": [*markers["Epi"][:4], "Hk_03"],
        "decoy a": list(rng.choice(genes, 6, replace=False)),
        "decoy b": list(rng.choice(genes, 6, replace=False)),
    }
    return sdata, sets


PLANTED = {"Imm": "IMMUNE RESPONSE", "Str": "STROMAL ECM", "Tum": "TUMOUR PROLIFERATION", "Epi": "EPITHELIAL POLARITY"}


@pytest.mark.parametrize("method", ["ora", "ulm", "mlm", "zscore"])
def test_planted_pathway_ranks_first_in_its_domain(labelled, method):
    sdata, sets = labelled
    truth = sdata.tables["truth"]
    result = hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="domain_label", method=method, key_added=method)
    assert list(result.columns) == ["group", "term", "score", "padj", "n_genes", "rank", "genes"]
    assert set(result["group"]) == set(PLANTED)
    assert len(result) == 4 * len(sets)
    for group, term in PLANTED.items():
        rows = result[result["group"] == group].set_index("term")
        assert rows.loc[term, "rank"] == 1, (group, rows)
        assert rows.loc[term, "padj"] < 0.05  # measured 1.6e-3 (ORA, all four) to 1.4e-2 (zscore, Epi)
        assert rows.loc[term, "score"] > rows.drop(index=term)["score"].max()
        # the leading genes of the planted set are the compartment's own markers, the diluting gene is not one
        assert rows.loc[term, "genes"].split(", ")[0].startswith(group)
    pd.testing.assert_frame_equal(truth.uns[method], result)
    assert truth.uns[f"{method}_params"]["method"] == method
    markers = truth.uns[f"{method}_markers"]
    assert set(markers["group"]) == set(PLANTED) and len(markers) == 4 * truth.n_vars
    assert markers[markers["group"] == "Imm"].iloc[0]["gene"].startswith("Imm_")  # best marker of immune bins


def test_per_bin_scores_follow_the_planted_compartment(labelled):
    sdata, sets = labelled
    truth = sdata.tables["truth"]
    hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="domain_label", method="ulm")
    scores = truth.obsm["enrichment_scores"]
    assert list(scores.index) == list(truth.obs_names) and set(scores.columns) == set(sets)
    compartment = truth.obs["compartment"].astype(str).to_numpy()
    immune = scores["IMMUNE RESPONSE"].to_numpy()
    inside, outside = immune[compartment == "immune"], immune[np.isin(compartment, ["stroma", "tumour"])]
    assert np.nanmean(inside) > np.nanmean(outside) + 2  # measured 5.0 in immune bins, 0.7 stroma, 0.05 tumour
    stroma = scores["STROMAL ECM"].to_numpy()
    assert np.nanmean(stroma[compartment == "stroma"]) > np.nanmean(stroma[compartment == "immune"]) + 2  # 3.5, 0.1


def test_gene_sets_from_a_gmt_file_a_network_and_a_dict_agree(labelled, tmp_path):
    sdata, sets = labelled
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("".join(f"{name}\thttp://example.org\t" + "\t".join(genes) + "\n" for name, genes in sets.items()))
    assert gs.read_gmt(gmt) == sets  # names with spaces survive: fields are split on tabs
    network = gs.as_network(sets)
    assert gs.as_dict(network) == sets
    from_dict = hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="domain_label", bin_scores=False)
    from_gmt = hx.tl.enrich(sdata, "truth", gene_sets=str(gmt), groupby="domain_label", bin_scores=False)
    from_net = hx.tl.enrich(sdata, "truth", gene_sets=network, groupby="domain_label", bin_scores=False)
    pd.testing.assert_frame_equal(from_dict, from_gmt)
    pd.testing.assert_frame_equal(from_dict, from_net)


@pytest.mark.slow
def test_results_survive_writing_the_table(labelled, tmp_path):
    sdata, sets = labelled
    truth = sdata.tables["truth"]
    hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="domain", key_added="written")
    truth.write_zarr(tmp_path / "truth.zarr")
    back = ad.read_zarr(tmp_path / "truth.zarr")
    pd.testing.assert_frame_equal(back.uns["written"], truth.uns["written"], check_dtype=False)
    np.testing.assert_allclose(back.obsm["written_scores"].to_numpy(), truth.obsm["written_scores"].to_numpy())


def test_bad_input_says_what_is_wrong_and_writes_nothing(labelled):
    sdata, sets = labelled
    truth = sdata.tables["truth"]
    before = (set(truth.obs.columns), set(truth.obsm), set(truth.uns))
    with pytest.raises(ValueError, match=r"downloads nothing.*fails offline"):
        hx.tl.enrich(sdata, "truth", gene_sets="KEGG_2021_Human", key_added="bad")
    with pytest.raises(ValueError, match=r"obs has no column 'cell_type'.*'domain', 'domain_label'"):
        hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="cell_type", key_added="bad")
    with pytest.raises(ValueError, match="No gene set has 3 or more genes in the table"):
        hx.tl.enrich(sdata, "truth", gene_sets={"T cells": ["CD3E", "CD8A", "CD4"]}, key_added="bad")
    lower = {name: [g.lower() for g in genes] for name, genes in sets.items()}
    with pytest.raises(ValueError, match="6 set\\(s\\) would match ignoring case"):
        hx.tl.enrich(sdata, "truth", gene_sets=lower, key_added="bad")
    with pytest.raises(ValueError, match="not a table of bins"):
        hx.tl.enrich(sdata, "table", gene_sets=sets, key_added="bad")  # the Visium spots
    with pytest.raises(ValueError, match="method must be one of"):
        hx.tl.enrich(sdata, "truth", gene_sets=sets, method="gsea_prerank", key_added="bad")
    with pytest.raises(ValueError, match="needs columns 'source' and 'target'"):
        hx.tl.enrich(sdata, "truth", gene_sets=pd.DataFrame({"set": ["a"], "gene": ["Imm_01"]}), key_added="bad")
    truth.obs["one"] = pd.Categorical(["x"] * truth.n_obs)
    with pytest.raises(ValueError, match="single group"):
        hx.tl.enrich(sdata, "truth", gene_sets=sets, groupby="one", key_added="bad")
    del truth.obs["one"]
    assert (set(truth.obs.columns), set(truth.obsm), set(truth.uns)) == before


def test_small_sets_are_left_out_with_a_warning(labelled):
    sdata, sets = labelled
    with pytest.warns(UserWarning, match="1 of 7 gene sets have fewer than 3 genes") as caught:
        result = hx.tl.enrich(
            sdata, "truth", gene_sets={**sets, "tiny": ["Imm_01", "CD3E"]}, groupby="domain_label", key_added="x"
        )
    assert "tiny" not in set(result["term"])
    assert caught[0].filename == __file__  # points at the user's call, not inside histex


def test_sparse_counts_stay_sparse_and_give_the_dense_results(labelled):
    sdata, sets = labelled
    truth = sdata.tables["truth"]
    assert sp.issparse(truth.X)  # the toy's truth, like a Visium HD table, is CSR
    sparse_log = log_normalised(truth, keep_sparse=True)
    assert sp.issparse(sparse_log) and sparse_log.nnz == truth.X.nnz
    np.testing.assert_allclose(sparse_log.toarray(), log_normalised(truth), rtol=1e-6)
    dense = truth.copy()
    dense.X = truth.X.toarray()
    sdata.tables["truth_dense"] = dense
    try:
        kwargs = {"gene_sets": sets, "groupby": "domain_label", "method": "ulm", "key_added": "both"}
        from_sparse = hx.tl.enrich(sdata, "truth", **kwargs)
        from_dense = hx.tl.enrich(sdata, "truth_dense", **kwargs)
    finally:
        del sdata.tables["truth_dense"]
    pd.testing.assert_frame_equal(from_sparse, from_dense, rtol=1e-4)
    np.testing.assert_allclose(truth.obsm["both_scores"], dense.obsm["both_scores"], rtol=1e-3, atol=1e-4)


def test_per_bin_ulm_equals_decouplers_on_dense_and_sparse_counts():
    import decoupler as dc

    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(0.5, size=(2000, 300)).astype(np.float32))
    x[:1000, :20] += 1
    x[:5] = 0  # bins without expression: decoupler leaves them out, here they score NaN
    x[:, 7] = 0  # a gene without counts: decoupler leaves it out of the model
    genes = [f"g{i}" for i in range(300)]
    sets = {"a": genes[:20], "b": genes[5:40], "c": [*genes[100:130], "g7"]}
    names = [str(i) for i in range(2000)]
    expected, _ = dc.mt.ulm(pd.DataFrame(x, index=names, columns=genes), gs.as_network(sets), tmin=3)
    expected = expected.reindex(index=names)[list(sets)].to_numpy()
    assert np.isnan(expected[:5]).all() and np.isfinite(expected[5:]).all()
    np.testing.assert_allclose(gs.ulm_scores(x, genes, sets), expected, rtol=1e-10, equal_nan=True)
    sparse = gs.ulm_scores(sp.csr_matrix(x), genes, sets)  # float32 products: t-values within 1e-5
    np.testing.assert_allclose(sparse, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.nanmean(expected[5:1000, 0]) > np.nanmean(expected[1000:, 0]) + 5  # the planted set scores
