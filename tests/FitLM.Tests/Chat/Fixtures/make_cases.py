"""Writes cases.json: each chat template fixture rendered by Python's jinja2 exactly as Hugging Face's
apply_chat_template renders it (ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loopcontrols,
tojson = json.dumps(ensure_ascii=False), raise_exception, strftime_now). Run: python3 make_cases.py
The C# tests compare FitLM's renderer against these strings byte for byte."""
import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime(2025, 3, 7, 14, 5, 9)  # the tests give strftime_now the same clock


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: FIXED_NOW.strftime(fmt)
    return env


CONV = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]
NO_SYSTEM = CONV[1:]
UNICODE = [{"role": "user", "content": "Grüße, 世界! \"quotes\" and 'apostrophes' \\ back\tslash\n  two lines  "}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                          "days": {"type": "integer"}}, "required": ["city"]}}}]
TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21.5}"},
]
THINK = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "<think>\nAgain.\n</think>\n\n6"},
]

TEMPLATES = {
    "chatml-openhermes-2.5.jinja": ("", "", [CONV, UNICODE]),
    "mistral-7b-instruct-v0.2.jinja": ("<s>", "</s>", [NO_SYSTEM, CONV]),
    "mistral-nemo-instruct-2407.jinja": ("<s>", "</s>", [CONV, NO_SYSTEM, (TOOL_CONV, {"tools": TOOLS}), NO_SYSTEM[:2] + [NO_SYSTEM[1]]]),
    "vigogne-2-70b-chat.jinja": ("<s>", "</s>", [CONV, NO_SYSTEM]),
    "gemma-7b-it.jinja": ("<bos>", "<eos>", [NO_SYSTEM, CONV]),
    "gemma-2-2b-it.jinja": ("<bos>", "<eos>", [NO_SYSTEM, UNICODE, CONV]),
    "openchat-3.5-0106.jinja": ("<s>", "</s>", [CONV]),
    "deepseek-coder-33b-instruct.jinja": ("<｜begin▁of▁sentence｜>", "<|EOT|>", [CONV, NO_SYSTEM]),
    "command-r-plus.jinja": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", [CONV, NO_SYSTEM]),
    "llama-3-8b-instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", [CONV, UNICODE]),
    "llama-3.2-3b-instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", [CONV, NO_SYSTEM, (TOOL_CONV, {"tools": TOOLS}), (CONV, {"date_string": "01 Jan 2030"})]),
    "llama-3.3-70b-instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>", [CONV, UNICODE, (TOOL_CONV, {"tools": TOOLS}), (TOOL_CONV, {"tools": TOOLS, "tools_in_user_message": False}), (TOOL_CONV, {"builtin_tools": ["brave_search", "code_interpreter"]})]),
    "qwen2.5-7b-instruct.jinja": ("", "<|im_end|>", [CONV, NO_SYSTEM, UNICODE, (TOOL_CONV, {"tools": TOOLS})]),
    "qwen3-0.6b.jinja": ("", "<|im_end|>", [CONV, NO_SYSTEM, THINK, (THINK[:3], {"enable_thinking": False}), (TOOL_CONV, {"tools": TOOLS})]),
    "phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>", [CONV, UNICODE]),
}

# Small templates for single features, rendered with the same environment.
SNIPPETS = [
    "  {% if true %}\n  a\n  {% endif %}\n  b {{ 1 }}\n {% if 1 %} c {% endif %} \n",
    "{%- for x in [1, 2, 3] -%}\n  {{ x }}{% if not loop.last %}, {% endif %}\n{%- endfor %}|{{ loop is defined }}",
    "{% for x in [1,2] %}[{{ y }}]{% set y = x %}{% endfor %}|{{ y }}",
    "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
    "{% for i in range(6) %}{% if i is odd %}{% continue %}{% endif %}{{ i }}{% endfor %}",
    "{% for a in [] %}x{% else %}empty{% endfor %}",
    "{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 'a' * 3 }} {{ 3 // 2.0 }} {{ 10 / 4 }} {{ 2 ** 10 }} {{ 1.0 }} {{ 1e20 }} {{ 1/3 }}",
    "{{ 'ab' ~ 1 ~ none }} {{ [1, 2] + [3] }} {{ 'x' in 'xyz' }} {{ 1 == 1.0 }} {{ true }} {{ none }} {{ [1, 'a', none, true, 1.5] }} {{ {'a': {'b': 1}} }}",
    "{{ x is defined }}|{{ x|length }}|{{ 'ab' is iterable }}|{{ x is none }}|{{ x|default('d') }}|{{ ''|default('e', true) }}|{{ x }}|",
    "{{ 'a,b,,c'.split(',') }} {{ 'a b  c'.split() }} {{ '  x \\n'.strip() }}|{{ 'xxhixx'.strip('x') }} {{ 'hello wORLD'.title() }} {{ 'hello world'|title }} {{ 'hELLO'|capitalize }} {{ 'aXb'.lower() }}{{ 'aXb'|upper }}",
    "{{ [1, 2, 3][::-1] }} {{ 'abcdef'[1:] }} {{ 'abcdef'[1:5:2] }} {{ [1, 2, 3][-1] }} {{ [1,2,3][:-1] }} {{ 'abc'[::-1] }} {{ [1][5] }}|",
    "{% set d = {'b': 1, 'a': [1, 'é', 1.5, none, true]} %}{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ d|tojson(sort_keys=true) }}|{{ d.items()|list }}|{{ d|items|list }}|{{ d.get('zz', 'dflt') }}|{{ d.keys()|list }}",
    "{{ [3, 1, 2]|sort|join('-') }} {{ ['a', 'b']|first }}{{ ['a', 'b']|last }} {{ 'a-b'|replace('-', '+') }} {{ [1, 2, 1]|unique|list }} {{ ['x', 'y']|map('upper')|join }} {{ [1, 0, 2]|select|list }} {{ [1, 2, 3]|reject('odd')|list }}",
    "{% set ms = [{'role': 'user', 'n': 1}, {'role': 'bot', 'n': 2}, {'role': 'user', 'n': 3}] %}{{ ms|selectattr('role', 'equalto', 'user')|map(attribute='n')|list }} {{ ms|rejectattr('role', 'equalto', 'user')|list|length }} {{ ms|map(attribute='n')|sum }}",
    "{{ 'yes' if 1 > 2 else 'no' }} {{ 'only' if false }}| {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ not 1 in [1] }} {{ 1 not in [2] }} {{ (1, 2) }} {{ 'a' if true }}",
    "{%- set greeting -%}\n  Hello {{ name }}!\n{%- endset %}[{{ greeting }}]{# a comment #}\n{#- trimmed comment -#}\n  next",
    "line1\n    {% if true %}\n    indented\n    {%+ if true %}kept{% endif %}\n    {%- if true %} dash{% endif %}\n{% endif %}\nend\n",
    "{{ strftime_now('%Y-%m-%d %H:%M:%S %b %B %a %A %y %j %I%p') }}",
    "{{ \"it's\" }} {{ 'say \"hi\"' }} {{ ['it\\'s', \"q\\\"q\"] }} {{ 'tab\\tnl\\nuni\\u00e9' }}",
    "{% for k, v in {'x': 1, 'y': 2}|items %}{{ loop.index }}{{ k }}={{ v }}{{ loop.revindex }}{% if loop.first %}F{% endif %}{{ loop.length }};{% endfor %}",
    "{% for m in ['a', 'b', 'c', 'd'] if m != 'b' %}{{ loop.index0 }}{{ m }}{{ loop.cycle('<', '>') }}{% endfor %}",
    "{{ 'a' 'b' }} {% set a, b = 1, 2 %}{{ a }}{{ b }} {{ [1, 2, 3]|length - 1 }} {{ -2 ** 2 }} {{ [1, 2,]|length }}{{ {'k': 1,}|length }} {{ 'x' is in ['x'] }} {{ 9 is divisibleby 3 }}",
    "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ loop.previtem }}{% endfor %}{{ loop.index }}{% if loop.nextitem is defined %}n{% endif %};{% endfor %}",
    "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 123456789012345678.0 }} {{ 1.5e-7 }} {{ 100.0 }} {{ 2.5e15 }} {{ -0.0001 }} {{ 7 / 7 }}",
    "{{ {'a': 1, 'b': [1, 2]}|tojson(separators=(',', ':')) }} {{ 'é\u2028'|tojson }} {{ none|tojson }} {{ [1.0, -1.5e-9]|tojson }}",
    "{%- for x in 'ab' -%} {{- ' ' ~ x ~ ' ' -}} {%- endfor %}| {{ '\\x41\\u00e9' }} {{ x is defined and x.y }} {{ none is none }} {{ [] is sequence }} {{ x|default(none) is none }}",
    "{{ 'abc' is string and 5 is number }} {{ 'A' is upper }} {{ 5 is integer }} {{ 5.0 is float }} {{ {} is mapping }} {{ true is boolean }} {{ 1 is sameas 1 }} {{ none is sameas none }}",
    "{{ 'text'|indent(2) }}|{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(4, true) }}|{{ -3|abs }} {{ '42'|int + 1 }} {{ '2.5'|float }} {{ 7|string ~ '' }} {{ 'x y z'|wordcount }}",
]

ERRORS = [
    ("{% if true %}no end", "unexpected end of template"),
    ("{{ 'x' | no_such_filter }}", "unknown filter 'no_such_filter'"),
    ("{{ raise_exception('Roles must alternate') }}", "Roles must alternate"),
    ("{{ 1 +  }}", "expected an expression"),
    ("a\n  {{ unclosed", "unclosed tag"),
    ("{% endfor %}", "unexpected 'endfor'"),
    ("{{ x is no_such_test }}", "unknown test 'no_such_test'"),
    ("{{ undefined_var.attr }}", "'undefined_var' is undefined"),
    ("{% macro m() %}{% endmacro %}", "unsupported tag 'macro'"),
]


def render(env, template, bos, eos, messages, extra, add_generation_prompt):
    ctx = dict(messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
               bos_token=bos, eos_token=eos)
    ctx.update(extra)
    try:
        return {"expected": env.from_string(template).render(**ctx)}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main():
    here = Path(__file__).parent
    env = environment()
    cases = []
    for file, (bos, eos, convs) in TEMPLATES.items():
        template = (here / "templates" / file).read_text(encoding="utf-8")
        for i, conv in enumerate(convs):
            messages, extra = conv if isinstance(conv, tuple) else (conv, {})
            for agp in (True, False):
                case = {"name": f"{file}#{i}{'+gen' if agp else ''}", "template": file, "bos": bos, "eos": eos,
                        "messages": messages, "vars": extra, "add_generation_prompt": agp}
                case.update(render(env, template, bos, eos, messages, extra, agp))
                cases.append(case)
    for i, text in enumerate(SNIPPETS):
        case = {"name": f"snippet#{i}", "template_text": text, "bos": "", "eos": "", "messages": [],
                "vars": {"name": "World"}, "add_generation_prompt": False}
        case.update(render(env, text, "", "", [], {"name": "World"}, False))
        assert "expected" in case, (text, case)
        cases.append(case)
    errors = [{"template_text": t, "error_contains": m} for t, m in ERRORS]
    out = {"fixed_now": FIXED_NOW.isoformat(), "jinja2_version": jinja2.__version__, "cases": cases, "syntax_and_runtime_errors": errors}
    (here / "cases.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(len(cases), "cases;", sum("error" in c for c in cases), "raise errors")


if __name__ == "__main__":
    main()
