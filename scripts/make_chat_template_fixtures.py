#!/usr/bin/env python3
"""Chat-template fixtures: real templates (Llama-2, Llama-3, Mistral, Qwen2, Qwen2.5 with tools,
Zephyr, SmolLM2 from its GGUF) plus one that exercises the rest of the Jinja subset, rendered
by jinja2 the way transformers' apply_chat_template renders them (trim_blocks, lstrip_blocks,
loopcontrols, raise_exception, a tojson that keeps non-ASCII). Writes
fixtures/chat_templates/templates.json and reference.json; Strata's renderer must produce the
same strings (or fail where jinja2 raised).

    python3 scripts/make_chat_template_fixtures.py
"""
import json
import os

import jinja2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "chat_templates")

TEMPLATES = {
    "llama-2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "llama-3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "qwen2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "qwen2.5-tools": """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""",
    "features": """{%- set ns = namespace(count=0, sys='') -%}
{%- macro tag(role, text='') -%}<{{ role|upper }}>{{ text }}</{{ role }}>{%- endmacro -%}
{%- for m in messages if m.role != 'system' -%}
  {%- set ns.count = ns.count + 1 -%}
  {{ loop.index }}/{{ loop.length }} {{ tag(m.role, m.content[:20] ~ ('...' if m.content|length > 20 else '')) }}
  {%- if not loop.last %} | {% endif -%}
{%- endfor %}
{{ ns.count }} turns; systems: {{ messages|selectattr('role', 'equalto', 'system')|list|length }}
{% if 'Hi' in messages[-1].content %}greeting{% elif messages[-1].content is string and messages[-1].content.startswith('W') %}question{% else %}other{% endif %}

{{ messages[::-1][0].role }} {{ messages|map(attribute='role')|join(',') }} {{ [1, 2, 3][1:] }} {{ {'a': 1}.get('a') }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 'x' * 3 }} {{ -3 + 10 }} {{ 2.5 * 2 }}
{%- for k, v in {'b': 2, 'a': 1}.items() %} {{ k }}={{ v }}{% endfor %}
    {% if true %}indented block tag is lstripped{% endif %}
{{ "tojson: " ~ (messages[0] | tojson) }}
{{ messages[0] | tojson(indent=2) }}
{% for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% if i == 2 %}{% break %}{% endif %}{% endfor %}
{{ messages[0].content | trim | lower | title }} {{ none is none }} {{ undefined_name is defined }} {{ (messages | length) is even }} {{ 'a,b'.split(',') }}
{% set block %}captured {{ messages|length }}{% endset %}{{ block | replace('captured', 'CAPTURED') }}
""",
}

GREETING = [{"role": "user", "content": "Hi! café ☕\nSecond line."}]
CONVERSATIONS = {
    "user": GREETING,
    "system-user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [{"role": "user", "content": "  Tell me a joke.  "}, {"role": "assistant", "content": "Why did the chicken cross the road?"},
                   {"role": "user", "content": "Why?"}],
    "system-multi-turn": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Where is Paris, \"the city\"?"}],
    "tools": [{"role": "user", "content": "Weather in Paris?"},
              {"content": "", "role": "assistant", "tool_calls": [{"function": {"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}, "type": "function"}]},
              {"content": "{\"temperature\": 21}", "role": "tool"}, {"content": "22 °C in Zürich?", "role": "tool"}],
}
TOOLS = [{"function": {"description": "Current weather", "name": "get_weather",
                       "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}},
          "type": "function"}]


def render(template, messages, add_generation_prompt, tools):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return {"text": env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                          bos_token="<s>", eos_token="</s>", tools=tools)}
    except jinja2.TemplateError as e:
        return {"error": str(e)}


def main():
    import gguf
    import glob
    smol = glob.glob(os.path.expanduser("~/.cache/strata/smollm2/*.gguf"))
    if smol:
        TEMPLATES["smollm2"] = gguf.GGUFReader(smol[0]).fields["tokenizer.chat_template"].contents()
    os.makedirs(OUT, exist_ok=True)
    cases = []
    for name, template in TEMPLATES.items():
        for conv, messages in CONVERSATIONS.items():
            for agp in (True, False):
                tools = TOOLS if conv == "tools" else None
                cases.append({"template": name, "conversation": conv, "add_generation_prompt": agp, "tools": tools,
                              **render(template, messages, agp, tools)})
    with open(os.path.join(OUT, "templates.json"), "w", encoding="utf-8") as f:
        json.dump({"templates": TEMPLATES, "conversations": CONVERSATIONS}, f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    print(len(cases), "cases,", sum("error" in c for c in cases), "raise")


if __name__ == "__main__":
    main()
