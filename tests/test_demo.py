"""`make run` prints the demo; it must run end to end and show every section."""

from dp2ejax import demo


def test_demo_runs_and_prints_every_section(capsys):
    demo.main()
    out = capsys.readouterr().out
    for section in ("Formats", "round_to in every mode", "Stochastic rounding is unbiased",
                    "precision policies", "CESTAC", "Dense_1", "Oversmoothing", "floor/eps"):
        assert section in out
    assert "fp4_e2m1" in out and "nan" in out
