"""Resource specifications and worker pools: validation without a pilot."""
import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_rcylon import RadicalCylonExecutor, ResourceSpec, WorkerPool, cylon_app


def test_spec_defaults_and_alias():
    assert ResourceSpec.from_mapping({}) == ResourceSpec(ranks=1)
    assert ResourceSpec.from_mapping({"num_ranks": 3}).ranks == 3


@pytest.mark.parametrize("spec, key", [
    ({"ranks": 0}, "ranks"),
    ({"ranks": -2}, "ranks"),
    ({"ranks": 1.5}, "ranks"),
    ({"ranks": True}, "ranks"),
    ({"gpus_per_rank": -1}, "gpus_per_rank"),
    ({"cores_per_rank": 0}, "cores_per_rank"),
    ({"pool": 3}, "pool"),
    ({"walltme": 3}, "walltme"),
    ({"ranks": 2, "num_ranks": 3}, "num_ranks"),
])
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(InvalidResourceSpecification) as err:
        ResourceSpec.from_mapping(spec, where="myapp")
    assert key in str(err.value)
    assert "myapp" in str(err.value)


def test_decorator_rejects_bad_rank_count_at_definition():
    with pytest.raises(InvalidResourceSpecification, match="ranks must be an integer >= 1"):
        @cylon_app(ranks=0)
        def f(ctx):
            return 1


def test_pool_validation():
    with pytest.raises(ValueError, match="ranks"):
        WorkerPool(name="x", ranks=0)
    with pytest.raises(ValueError, match="unique"):
        RadicalCylonExecutor(pools=[WorkerPool(name="a"), WorkerPool(name="a")])
    with pytest.raises(ValueError, match="either"):
        RadicalCylonExecutor(worker_ranks=2, pools=[WorkerPool(name="a")])


def test_executor_validates_fit_without_starting():
    ex = RadicalCylonExecutor(pools=[WorkerPool(name="cpu", ranks=4), WorkerPool(name="gpu", ranks=2, gpus_per_rank=1)])
    assert ex.validate_resource_specification({"ranks": 4}).ranks == 4
    assert ex.validate_resource_specification({"ranks": 2, "gpus_per_rank": 1}).gpus_per_rank == 1
    with pytest.raises(InvalidResourceSpecification, match=r"needs 5 rank\(s\).*cpu \(1 x 4 ranks"):
        ex.validate_resource_specification({"ranks": 5})
    with pytest.raises(InvalidResourceSpecification, match="no pool named 'big'"):
        ex.validate_resource_specification({"pool": "big"})
    with pytest.raises(InvalidResourceSpecification, match="one rank"):
        ex.validate_resource_specification({"ranks": 2}, cylon=False)
