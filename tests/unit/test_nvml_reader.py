"""read_gpu over pynvml getters replaced here: what a GPU answered NOT_SUPPORTED is not asked again.

Every ``pynvml.nvmlDevice*`` function is replaced by one that counts its calls and answers from a
table (NOT_SUPPORTED for the getters the table leaves out), so these tests need no NVML library;
the process tests drive the same code through the fake one.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from exporter.nvml_reader import Unsupported, read_gpu

pytestmark = pytest.mark.unit

HANDLE = object()  # what nvmlDeviceGetHandleByIndex hands back


class Gpu:
    """Answers per getter: a value, an NVML error (``Error``), a list of them in turn, or a function
    of the call's arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.answers: dict[str, Any] = {"nvmlDeviceGetHandleByIndex": HANDLE}
        for name in dir(pynvml):
            if name.startswith("nvmlDevice") and callable(getattr(pynvml, name)):
                monkeypatch.setattr(pynvml, name, self._getter(name))

    def _getter(self, name: str) -> Any:
        def getter(*args: Any) -> Any:
            self.calls[name] += 1
            answer = self.answers.get(name, Error(pynvml.NVML_ERROR_NOT_SUPPORTED))
            if callable(answer):
                return answer(*args)
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            if isinstance(answer, Error):
                raise pynvml.NVMLError(answer.code)
            return answer

        getter.__name__ = name
        return getter


class Error:
    def __init__(self, code: int) -> None:
        self.code = code


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Gpu:
    gpu = Gpu(monkeypatch)
    gpu.answers["nvmlDeviceGetTemperature"] = 45
    return gpu


def test_a_not_supported_field_stays_absent_and_is_asked_once(gpu: Gpu) -> None:
    unsupported = Unsupported()
    for _ in range(3):
        sample = read_gpu(0, unsupported=unsupported).sample
        assert (sample.up, sample.temperature_celsius, sample.fan_speed_ratio) == (True, 45, None)
    assert gpu.calls["nvmlDeviceGetTemperature"] == 3
    assert gpu.calls["nvmlDeviceGetFanSpeed"] == 1
    assert gpu.calls["nvmlDeviceGetProcessUtilization"] == 0  # not asked for (no stamp given)


def test_per_process_utilization_not_supported_is_asked_once(gpu: Gpu) -> None:
    unsupported = Unsupported()
    for _ in range(3):
        reading = read_gpu(0, utilization_since=0, unsupported=unsupported)
        assert reading.process_utilization is None
    assert gpu.calls["nvmlDeviceGetProcessUtilization"] == 1


def test_nothing_ran_since_is_asked_again_every_pass(gpu: Gpu) -> None:
    gpu.answers["nvmlDeviceGetProcessUtilization"] = Error(pynvml.NVML_ERROR_NOT_FOUND)
    unsupported = Unsupported()
    for _ in range(3):
        assert read_gpu(0, utilization_since=5, unsupported=unsupported).process_utilization == {}
    assert gpu.calls["nvmlDeviceGetProcessUtilization"] == 3


def test_a_transient_error_is_asked_again_and_the_field_comes_back(gpu: Gpu) -> None:
    gpu.answers["nvmlDeviceGetPowerUsage"] = [
        Error(pynvml.NVML_ERROR_UNKNOWN),
        Error(pynvml.NVML_ERROR_TIMEOUT),
        250_000,
    ]
    unsupported = Unsupported()
    powers = [read_gpu(0, unsupported=unsupported).sample.power_watts for _ in range(4)]
    assert powers == [None, None, 250.0, 250.0]
    assert gpu.calls["nvmlDeviceGetPowerUsage"] == 4


def test_a_fresh_set_after_a_reinit_asks_again(gpu: Gpu) -> None:
    read_gpu(0, unsupported=Unsupported())
    read_gpu(0, unsupported=Unsupported())
    assert gpu.calls["nvmlDeviceGetFanSpeed"] == 2


def test_without_a_set_every_getter_is_asked_every_time(gpu: Gpu) -> None:
    read_gpu(0)
    read_gpu(0)
    assert gpu.calls["nvmlDeviceGetFanSpeed"] == 2


def test_a_getter_is_remembered_with_its_arguments(gpu: Gpu) -> None:
    def memory(*args: Any) -> Any:
        if len(args) > 1:  # the v2 structure: this driver knows only v1
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(total=80, used=30, free=50)

    gpu.answers["nvmlDeviceGetMemoryInfo"] = memory
    unsupported = Unsupported()
    for _ in range(3):
        assert read_gpu(0, unsupported=unsupported).sample.memory_used_bytes == 30
    assert gpu.calls["nvmlDeviceGetMemoryInfo"] == 1 + 3  # v2 once, then v1 each pass


def test_a_lost_gpu_is_down_and_not_remembered_as_unsupported(gpu: Gpu) -> None:
    gpu.answers["nvmlDeviceGetTemperature"] = Error(pynvml.NVML_ERROR_GPU_IS_LOST)
    unsupported = Unsupported()
    assert read_gpu(0, unsupported=unsupported).sample.up is False
    gpu.answers["nvmlDeviceGetTemperature"] = 50
    assert read_gpu(0, unsupported=unsupported).sample.temperature_celsius == 50
