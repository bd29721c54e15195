"""The suite's own fixtures work: a real container runs and the host sees its output."""


def test_runs_a_real_container(ketch, bundle, cid):
    bundle.args("echo", "inside")
    p = ketch("run", "--bundle", bundle.write(), cid)
    assert p.stdout.strip() == "inside"
