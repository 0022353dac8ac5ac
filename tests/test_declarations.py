"""Declarations are checked when the class is defined, with messages that name the bad value."""

import collections.abc

import pytest

import gpuserve
from gpuserve.errors import DeclarationError
from gpuserve.service import spec_of


def declare(service_kw=None, api_kw=None):
    @gpuserve.service(**(service_kw or {}))
    class S:
        @gpuserve.api(**(api_kw or {}))
        def run(self, x):
            return x

    return S


def test_a_valid_declaration_records_its_spec():
    S = declare({"resources": {"gpu": 1}, "workers": 2}, {"batchable": True, "max_batch_size": 8})
    spec = spec_of(S)
    assert spec.workers == 2 and spec.resources.gpu == 1
    api = spec.api("run")
    assert api.batchable and api.max_batch_size == 8 and api.params == ("x",) and api.required == {"x"}


def test_bare_api_decorator_works():
    @gpuserve.service
    class S:
        @gpuserve.api
        def go(self, a, b=2):
            return a

    api = spec_of(S).api("go")
    assert not api.batchable and api.max_batch_size == 1 and api.required == {"a"}


@pytest.mark.parametrize(
    ("service_kw", "named"),
    [
        ({"workers": 0}, "workers=0"),
        ({"workers": "2"}, "workers='2'"),
        ({"workers": True}, "workers=True"),
        ({"isolation": "fork"}, "isolation='fork'"),
        ({"backend": ""}, "backend=''"),
        ({"resources": {"gpus": 1}}, "gpus"),
        ({"resources": {"gpu": -1}}, "-1"),
    ],
)
def test_bad_service_options_raise_naming_the_value(service_kw, named):
    with pytest.raises(DeclarationError) as info:
        declare(service_kw)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("api_kw", "named", "valid"),
    [
        ({"max_batch_size": 0}, "max_batch_size=0", ">= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size=2.5", "whole number"),
        ({"max_latency_ms": -5}, "max_latency_ms=-5", "> 0"),
        ({"batchable": "yes"}, "batchable='yes'", "True or False"),
        ({"name": "livez"}, "'livez'", "reserved"),
        ({"name": "a b"}, "'a b'", "letters"),
    ],
)
def test_bad_api_options_raise_naming_the_value_and_what_is_valid(api_kw, named, valid):
    with pytest.raises(DeclarationError) as info:
        declare(api_kw=api_kw)
    assert named in str(info.value) and valid in str(info.value)


def test_a_service_without_apis_is_rejected():
    with pytest.raises(DeclarationError, match="no APIs"):
        @gpuserve.service
        class Empty:
            pass


def test_variadic_parameters_are_rejected():
    with pytest.raises(DeclarationError, match="named parameters"):
        @gpuserve.service
        class S:
            @gpuserve.api
            def go(self, *rows):
                return rows


def test_two_apis_with_one_name_are_rejected():
    with pytest.raises(DeclarationError, match="both named 'go'"):
        @gpuserve.service
        class S:
            @gpuserve.api(name="go")
            def a(self):
                return 1

            @gpuserve.api(name="go")
            def b(self):
                return 2


def test_context_outside_a_replica_says_where_it_works():
    with pytest.raises(gpuserve.errors.GpuserveError, match="only available inside a replica"):
        gpuserve.context()


def test_generator_methods_stream_and_their_annotation_names_one_value():
    from collections.abc import AsyncIterator, Generator, Iterator

    @gpuserve.service
    class S:
        @gpuserve.api
        def words(self, text: str) -> Iterator[str]:
            yield from text.split()

        @gpuserve.api
        async def ticks(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

        @gpuserve.api(batchable=True, max_batch_size=4)
        def letters(self, text: list[str]) -> Generator[list[str], list[int], None]:
            yield [t[0] for t in text]

        @gpuserve.api
        def plain(self, x: int) -> int:
            return x

    spec = spec_of(S)
    assert [spec.api(name).streams for name in ("words", "ticks", "letters", "plain")] == [True, True, True, False]
    assert spec.api("ticks").is_async and not spec.api("words").is_async
    assert spec.api("words").signature.returns is str and spec.api("letters").signature.returns is str
    assert spec.api("letters").rows_per_request == 1 and spec.api("plain").rows_per_request == 1


@pytest.mark.parametrize(
    ("annotation", "batchable", "named"),
    [
        (list[int], False, "Iterator[X]"),
        (collections.abc.Iterator, False, "Iterator[X]"),
        (collections.abc.Iterator[int], True, "Iterator[list[X]]"),
    ],
)
def test_a_generator_api_with_the_wrong_annotation_says_what_to_write(annotation, batchable, named):
    def run(self, x: list[int]):
        yield x

    run.__annotations__["return"] = annotation
    with pytest.raises(DeclarationError) as info:
        gpuserve.api(batchable=batchable)(run)
    assert named in str(info.value) and repr(annotation) in str(info.value)
