import numpy as np
import pytest
from hhscan.errors import ExpressionError
from hhscan.settings import expr

COLUMNS = {
    "pt": np.array([10.0, 40.0, 60.0, 25.0]),
    "eta": np.array([-3.0, 1.0, -0.5, 2.0]),
    "jet1_b-tag": np.array([0.1, 0.9, 0.5, 0.95]),
    "is_fwd": np.array([1, 0, 0, 1]),
    "$era": np.array(["2016", "2017", "2016", "2016"]),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pt > 20 && abs(eta) < 2.4", [False, True, True, True]),
        ("pt > 50 || !is_fwd", [False, True, True, False]),
        ('"jet1_b-tag" > 0.8', [False, True, False, True]),
        ("`jet1_b-tag` >= 0.5 && pt < 100", [False, True, True, True]),
        ("20 < pt && pt <= 40", [False, True, False, True]),
        ("sqrt(pt) * 2 - 1", 2 * np.sqrt(COLUMNS["pt"]) - 1),
        ("pow(eta, 2) + pt / 10 % 3", COLUMNS["eta"] ** 2 + (COLUMNS["pt"] / 10) % 3),
        ("TMath::Abs(eta) > 1.5", [True, False, False, True]),
        ("-pt + 1e1", 10 - COLUMNS["pt"]),
        ("!(pt > 20) == 0", [False, True, True, True]),
        # C/ROOT precedence, computed by hand: `!` applies to pt first (pt is never 0, so !pt is 0), then > 20.
        ("!pt > 20", [False, False, False, False]),
        ("!pt == 0", [True, True, True, True]),
        ("!is_fwd + 1", [1.0, 2.0, 2.0, 1.0]),  # (!is_fwd) + 1
        ("!(is_fwd + 1)", [False, False, False, False]),
        ("!!is_fwd", [True, False, False, True]),
        ("-pt > -30 && !is_fwd", [False, False, False, False]),
        ("pt > 20 && !is_fwd || eta > 1.5", [False, True, True, True]),
    ],
)
def test_evaluates_root_style_expressions(text, expected):
    np.testing.assert_allclose(expr.parse(text).evaluate(COLUMNS), np.asarray(expected, dtype=float))


def test_branches_are_listed_in_order_of_use():
    assert expr.parse('pt > 3 && "jet1_b-tag" < abs(eta) || pt < 1').branches == ("pt", "jet1_b-tag", "eta")
    assert expr.parse("$era").branches == ("$era",)


def test_unknown_branch_lists_the_closest_names():
    with pytest.raises(ExpressionError, match=r"unknown branch 'ptt'.*closest: pt"):
        expr.parse("ptt > 3").evaluate(COLUMNS, where="f.root:Events")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pt > ", "syntax error"),
        ("pt >> 3", "construct"),
        ("__import__('os').system('true')", "cannot read|only numbers|unknown function"),
        ("open(pt)", "unknown function 'open'"),
        ("pt.real > 1", ""),  # dotted names are branch names (ROOT leaves), not attribute access
        ("pt ^ 2", "pow"),
        ("pt > 3 ; 1", "cannot read"),
        ("lambda: 1", "cannot read|construct"),
        ("[pt]", "cannot read|construct"),
        ("", "empty"),
        ("20 < pt < 40", "chained comparison.*20 < pt && pt < 40"),
        ("pt == eta == 1", "chained comparison"),
    ],
)
def test_rejects_anything_but_the_expression_language(text, message):
    if text == "pt.real > 1":
        assert expr.parse(text).branches == ("pt.real",)
        return
    with pytest.raises(ExpressionError, match=message):
        expr.parse(text, where="cfg.yaml:cut")


def test_error_names_the_place():
    with pytest.raises(ExpressionError, match=r"^cfg.yaml:cut: syntax error"):
        expr.parse("(pt > 3", where="cfg.yaml:cut")


# ------------------------------------------------------------------------- jagged values (awkward columns)

JETS = [[50.0, 20.0], [], [35.0, 45.0, 5.0]]
JAGGED = {"Jet_pt": None, "w": np.array([1.0, -1.0, 2.0])}


def _jagged_columns():
    import awkward as ak

    return {"Jet_pt": ak.Array(JETS), "w": JAGGED["w"]}


@pytest.mark.parametrize(
    ("text", "expected", "lacking"),
    [
        # Written out per event by hand: (values, events lacking an indexed entry).
        ("w > 0 && Jet_pt[1] > 40", [False, False, True], [False, False, False]),  # event 1: w > 0 is false
        ("w < 0 || Jet_pt[1] > 40", [False, True, True], [False, False, False]),  # event 1: w < 0 is true
        ("!(Jet_pt[1] > 40)", [True, False, False], [False, True, False]),
        ("Jet_pt[2] * w", [0.0, 0.0, 10.0], [True, True, False]),
        ("Alt$(Jet_pt[2], -1) * w", [-1.0, 1.0, 10.0], [False, False, False]),
        ("Sum$(Jet_pt * w)", [70.0, 0.0, 170.0], [False, False, False]),
        ("MaxIf$(Jet_pt, Jet_pt < 40)", [20.0, 0.0, 35.0], [False, False, False]),
    ],
)
def test_jagged_expressions_keep_missing_entries_apart(text, expected, lacking):
    values, missing = expr.parse(text).evaluate_with_missing(_jagged_columns())
    np.testing.assert_array_equal(values, expected)
    assert values.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(missing if missing is not None else np.zeros(3, bool), lacking)


def test_static_shape_checks_name_the_counters():
    shapes = {"Jet_pt": expr.BranchShape(jagged=True, multiplicity="nJet"),
              "Jet_eta": expr.BranchShape(jagged=True, multiplicity="nJet"),
              "Muon_pt": expr.BranchShape(jagged=True, multiplicity="nMuon")}  # fmt: skip
    assert expr.parse("Sum$(Jet_pt * abs(Jet_eta) < 2)").check_shapes(shapes) == expr.FLAT
    assert expr.parse("Jet_pt * 2").check_shapes(shapes, block=True).multiplicity == "nJet"
    with pytest.raises(ExpressionError, match=r"^f: 'MinIf\$\(Jet_pt, Muon_pt > 3\)': Jet_pt \(counted by nJet\) and "
                                              r"Muon_pt \(counted by nMuon\) have different multiplicities"):  # fmt: skip
        expr.parse("MinIf$(Jet_pt, Muon_pt > 3)").check_shapes(shapes, "f")
    with pytest.raises(ExpressionError, match=r"Alt\$ takes one number per event"):
        expr.parse("Alt$(Jet_pt, 0)").check_shapes(shapes)
    with pytest.raises(ExpressionError, match=r"write Alt\$\(X\[i\], default\)"):
        expr.parse("Alt$(Jet_pt[0])")
    with pytest.raises(ExpressionError, match=r"closest: Sum\$"):
        expr.parse("Summ$(Jet_pt)")


@pytest.mark.parametrize(
    ("text", "bare"),
    [("Jet_pt", "Jet_pt"), ("`Jet.pt`", "Jet.pt"), ("Jet_pt * 2", None), ("Jet_pt[0]", None), ("Sum$(Jet_pt)", None)],
)
def test_a_bare_branch_is_an_expression_that_is_one_name(text, bare):
    assert expr.parse(text).bare_branch == bare
