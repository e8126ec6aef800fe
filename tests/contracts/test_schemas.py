import pytest
from pydantic import TypeAdapter, ValidationError

from contracts.limits import limit_violations
from contracts.settings import CommonSettings
from llm_tasks.job_schema import JobCreate
from llm_tasks.payloads import GenerateInput

job_adapter = TypeAdapter(JobCreate)


def test_generate_defaults_are_safe():
    payload = GenerateInput(prompt="Hello")
    assert 1 <= payload.max_new_tokens <= 512
    assert 0 <= payload.temperature <= 2
    assert payload.seed is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("max_new_tokens", 0),
        ("max_new_tokens", 100_000),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0),
        ("seed", -1),
    ],
)
def test_generate_rejects_out_of_bounds(field, value):
    payload = {"prompt": "Hello", field: value}
    with pytest.raises(ValidationError) as raised:
        GenerateInput.model_validate(payload)
    assert raised.value.errors()[0]["loc"] == (field,)


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        GenerateInput.model_validate({"prompt": "Hello", "max_length": 100})


def test_kind_selects_the_input_schema():
    job = job_adapter.validate_python({"kind": "generate", "input": {"prompt": "Hi"}})
    assert job.input.prompt == "Hi"
    assert job.priority == 5
    with pytest.raises(ValidationError) as raised:
        job_adapter.validate_python({"kind": "nonsense", "input": {}})
    assert raised.value.errors()[0]["type"] == "union_tag_invalid"


@pytest.mark.parametrize("priority", [-1, 10])
def test_priority_is_zero_to_nine(priority):
    with pytest.raises(ValidationError):
        job_adapter.validate_python(
            {"kind": "generate", "input": {"prompt": "Hi"}, "priority": priority}
        )


def test_settings_narrow_the_bounds():
    settings = CommonSettings(max_prompt_chars=10, max_new_tokens=20)
    ok = GenerateInput(prompt="short", max_new_tokens=20)
    assert limit_violations(ok, settings) == []
    too_much = GenerateInput(prompt="x" * 11, max_new_tokens=21)
    assert [v.field for v in limit_violations(too_much, settings)] == ["prompt", "max_new_tokens"]
