import textwrap

import pytest

from gateway.config.loader import load_text
from gateway.errors import ConfigError

GOOD = """\
version: 1
listen: 127.0.0.1:8080
admin: 127.0.0.1:9901
upstreams:
  app:
    url: http://127.0.0.1:8000
    timeouts: {connect: 2s, read: 30s}
    pool: {max_connections: 256}
routes:
  - name: users
    match: {path: /users/{id}, methods: [GET, HEAD]}
    upstream: app
    policies: {}
  - name: files
    match: {path: /files/{rest:path}}
    upstream: app
  - name: everything-else
    match: {prefix: /}
    upstream: app
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), "f.yaml")
    return [str(i) for i in info.value.issues]


def test_issue_example_loads_with_flow_style_templates() -> None:
    config, _ = load_text(GOOD, "f.yaml")
    assert config.routes[0].match.path == "/users/{id}"
    assert config.routes[1].match.path == "/files/{rest:path}"
    assert config.upstreams["app"].timeouts.read == 30.0
    assert config.store_specs["memory"].url == "memory://"


def test_unknown_key_points_at_the_key() -> None:
    text = GOOD.replace("    pool: {max_connections: 256}", "    pool: {max_conections: 256}")
    assert errors(text) == [
        "f.yaml:8:12: upstreams.app.pool: unknown key 'max_conections'; "
        "expected one of: max_connections, idle_timeout, max_requests"
    ]


def test_bad_value_points_at_the_value() -> None:
    text = GOOD.replace("read: 30s", "read: 30 parsecs")
    (err,) = errors(text)
    assert err.startswith("f.yaml:7:35: upstreams.app.timeouts.read: ")
    assert "not a duration" in err


def test_missing_key_and_unknown_upstream() -> None:
    text = GOOD.replace(
        "    upstream: app\n    policies: {}", "    upstream: nope\n    policies: {}"
    )
    text = text.replace("version: 1\n", "")
    errs = errors(text)
    assert "f.yaml:1:1: file: missing required key 'version'" in errs
    assert any(
        e.startswith("f.yaml:11:15: routes[0].upstream: 'nope' is not in `upstreams`") for e in errs
    )


def test_every_error_is_reported() -> None:
    text = GOOD.replace("listen: 127.0.0.1:8080", "listen: nowhere").replace(
        "methods: [GET, HEAD]", "methods: [GET, FETCH]"
    )
    errs = errors(text)
    assert len(errs) == 2
    assert errs[0].startswith("f.yaml:2:9: listen:")
    assert errs[1].startswith("f.yaml:11:12: routes[0].match:") and "FETCH" in errs[1]


def test_invalid_yaml_position() -> None:
    (err,) = errors("version: 1\nroutes: [\n  {name: x\n")
    assert err.startswith("f.yaml:") and "invalid YAML" in err


def test_duplicate_keys_are_errors() -> None:
    (err,) = errors(
        GOOD.replace("admin: 127.0.0.1:9901", "admin: 127.0.0.1:9901\nlisten: 1.2.3.4:1")
    )
    assert err == "f.yaml:4:1: duplicate key 'listen'"


def test_unknown_policy_and_bad_policy_option() -> None:
    text = GOOD.replace(
        "    policies: {}", "    policies:\n      caching: {}\n      noop: {respond: 42}"
    )
    errs = errors(text)
    assert errs[0].startswith("f.yaml:14:7: routes[0].policies: unknown policy 'caching'")
    assert errs[1].startswith("f.yaml:15:23: routes[0].policies.noop.respond:")


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_PORT", "9000")
    text = GOOD.replace("http://127.0.0.1:8000", "http://127.0.0.1:${UP_PORT}")
    text = text.replace("listen: 127.0.0.1:8080", "listen: ${LISTEN:-127.0.0.1:7000}")
    config, _ = load_text(text, "f.yaml")
    assert config.upstreams["app"].url == "http://127.0.0.1:9000"
    assert config.listen == "127.0.0.1:7000"
    monkeypatch.delenv("UP_PORT")
    (err,) = errors(text)
    assert err == "f.yaml:6:10: environment variable UP_PORT is not set"


def test_empty_and_non_mapping_files() -> None:
    assert errors("") == ["f.yaml:1:1: the file is empty"]
    assert errors("- 1\n- 2\n") == ["f.yaml:1:1: the file must be a mapping of keys"]


def test_config_is_frozen() -> None:
    config, _ = load_text(GOOD, "f.yaml")
    with pytest.raises(ValueError):
        config.listen = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("{path: /a, prefix: /b}", "exactly one of"),
        ("{path: users}", "must start with /"),
        ("{path: '/a/{bad-name}'}", "a parameter is"),
        ("{path: '/a/{rest:path}/b'}", "must be the last part"),
        ("{}", "exactly one of"),
    ],
)
def test_bad_matches(match: str, message: str) -> None:
    text = GOOD.replace("{prefix: /}", match)
    (err,) = errors(text)
    assert message in err


def test_env_default_applies_when_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN", "")
    text = GOOD.replace("listen: 127.0.0.1:8080", "listen: ${LISTEN:-127.0.0.1:7000}")
    assert load_text(text, "f.yaml")[0].listen == "127.0.0.1:7000"


def test_store_shorthand_validates_against_the_schema() -> None:
    import jsonschema

    from gateway.config.schema import policy_file_schema

    doc = {
        "version": 1,
        "stores": {"shared": "redis://127.0.0.1:6379/0", "other": {"url": "memory://"}},
        "upstreams": {"app": {"url": "http://127.0.0.1:1", "timeouts": {"read": "30 s"}}},
        "routes": [{"name": "r", "match": {"prefix": "/"}, "upstream": "app"}],
    }
    jsonschema.validate(doc, policy_file_schema())


@pytest.mark.parametrize("interval", ["0s", "0", "50ms"])
def test_reload_interval_below_the_minimum_is_refused(interval: str) -> None:
    # `interval: 0s` passed and then kept a core busy polling the file.
    text = GOOD.replace(
        "admin: 127.0.0.1:9901\n", f"admin: 127.0.0.1:9901\nreload: {{interval: {interval}}}\n"
    )
    (err,) = errors(text)
    assert err.startswith("f.yaml:4:20: reload.interval: must be at least 100ms")


def test_reload_interval_at_the_minimum_loads() -> None:
    text = GOOD.replace(
        "admin: 127.0.0.1:9901\n", "admin: 127.0.0.1:9901\nreload: {interval: 100ms}\n"
    )
    assert load_text(text, "f.yaml")[0].reload.interval == 0.1


def test_quoted_text_that_looks_like_a_path_template_is_left_alone() -> None:
    # The old text rewrite quoted `path: /x/{y}` inside a quoted string: "invalid YAML".
    text = GOOD.replace(
        "    policies: {}",
        '    policies: {noop: {response_header: "X-Doc: path: /x/{y}"}}  # path: /c/{id}',
    )
    config, _ = load_text(text, "f.yaml")
    assert config.routes[0].policies["noop"].response_header == "X-Doc: path: /x/{y}"


def test_single_quoted_template_and_templates_in_a_flow_sequence() -> None:
    text = GOOD.replace("{path: /files/{rest:path}}", "{path: '/files/{rest:path}'}")
    text = text.replace("{prefix: /}", "{path: /u/{a}/{b}/x, headers: {X-P: 'path: /x/{y}'}}")
    config, _ = load_text(text, "f.yaml")
    assert config.routes[1].match.path == "/files/{rest:path}"
    assert config.routes[2].match.path == "/u/{a}/{b}/x"
    assert config.routes[2].match.headers == {"X-P": "path: /x/{y}"}


def test_template_without_a_leading_slash_gets_the_model_message() -> None:
    (err,) = errors(GOOD.replace("{prefix: /}", "{path: users/{id}}"))
    assert err == "f.yaml:18:12: routes[2].match: 'users/{id}' must start with /"


def test_columns_after_an_unquoted_template_are_those_of_the_file() -> None:
    line = "    match: {path: /users/{id}, host: 5, bogus: 1}"
    text = GOOD.replace("    match: {path: /users/{id}, methods: [GET, HEAD]}", line)
    assert errors(text) == [
        f"f.yaml:11:{line.index('5') + 1}: routes[0].match.host: Input should be a valid string",
        f"f.yaml:11:{line.index('bogus') + 1}: routes[0].match: unknown key 'bogus'; "
        "expected one of: path, prefix, methods, host, headers",
    ]
    assert line.index("5") + 1 == 38


def test_error_in_the_issue_example_points_into_the_file() -> None:
    text = GOOD.replace("methods: [GET, HEAD]}", "methods: [GET, FETCH]}")
    (err,) = errors(text)
    assert err.startswith("f.yaml:11:12: routes[0].match: unknown HTTP method(s)")
    text = GOOD.replace("{path: /files/{rest:path}}", "{path: /files/{rest:path}, host: [x]}")
    (err,) = errors(text)
    assert err.startswith(f"f.yaml:15:{len('    match: {path: /files/{rest:path}, host: ') + 1}:")


MERGED = """\
version: 1
upstreams:
  app: &app
    url: http://127.0.0.1:8000
    timeouts: {connect: 1s, read: 7s}
  app2: {<<: *app, url: http://127.0.0.1:8001}
  app3:
    <<: [*app]
    timeouts: {connect: 3s, read: 5s}
routes:
  - name: a
    match: {prefix: /}
    upstream: app2
"""


def test_merge_keys_load_as_yaml_defines_them() -> None:
    # They were refused: "could not determine a constructor for the tag ...merge".
    config, _ = load_text(MERGED, "f.yaml")
    app2, app3 = config.upstreams["app2"], config.upstreams["app3"]
    assert app2.url == "http://127.0.0.1:8001"
    assert (app2.timeouts.connect, app2.timeouts.read) == (1.0, 7.0)
    assert app3.url == "http://127.0.0.1:8000"
    assert (app3.timeouts.connect, app3.timeouts.read) == (3.0, 5.0)


def test_an_error_in_a_merged_value_points_at_the_anchor() -> None:
    errs = errors(MERGED.replace("read: 7s", "read: soon"))
    assert [e.split(": ")[0] for e in errs] == ["f.yaml:5:35", "f.yaml:5:35"]
    assert "upstreams.app.timeouts.read" in errs[0]
    assert "upstreams.app2.timeouts.read" in errs[1]


def test_a_key_written_twice_beside_a_merge_is_still_a_duplicate() -> None:
    text = MERGED.replace("url: http://127.0.0.1:8001}", "url: http://a:1, url: http://b:1}")
    (err,) = errors(text)
    assert err.startswith("f.yaml:6:37: duplicate key 'url'")


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("admin: 127.0.0.1:9901", "admin: 127.0.0.1:8080", "3:8", "admin: the admin port cannot"),
        ("admin: 127.0.0.1:9901", "admin: 0.0.0.0:8080", "3:8", "admin: the admin port cannot"),
        ("admin: 127.0.0.1:9901\n", "admin: 127.0.0.1:9901\nlimits: {max_request_line: 0}\n",
         "4:28", "limits.max_request_line: must be more than 0"),
        ("admin: 127.0.0.1:9901\n", "admin: 127.0.0.1:9901\nlimits: {max_header_size: 0}\n",
         "4:27", "limits.max_header_size: must be more than 0"),
        ("admin: 127.0.0.1:9901\n", "admin: 127.0.0.1:9901\nlimits: {header_timeout: 0s}\n",
         "4:26", "limits.header_timeout: must be more than 0"),
        ("admin: 127.0.0.1:9901\n", "admin: 127.0.0.1:9901\nlimits: {body_timeout: 0s}\n",
         "4:24", "limits.body_timeout: must be more than 0"),
        ("{connect: 2s, read: 30s}", "{connect: 0s, read: 30s}", "7:25",
         "upstreams.app.timeouts.connect: must be more than 0"),
        ("{connect: 2s, read: 30s}", "{connect: 2s, read: 0s}", "7:35",
         "upstreams.app.timeouts.read: must be more than 0"),
        ("{connect: 2s, read: 30s}", "{connect: 2s, read: 30s, total: 0}", "7:47",
         "upstreams.app.timeouts.total: must be more than 0"),
        ("- name: users", '- name: ""', "10:11", "routes[0].name: a route needs a name"),
        ("methods: [GET, HEAD]", "methods: []", "11:41",
         "routes[0].match.methods: an empty list allows no method; omit methods to allow all"),
        ("methods: [GET, HEAD]", 'host: ""', "11:38", "routes[0].match.host: an empty host"),
        ("methods: [GET, HEAD]", 'headers: {"": x, X-Ok: y, "Bad Name": z}', "11:41",
         "routes[0].match.headers: not a header name: '', 'Bad Name'"),
        ("{path: /users/{id},", "{path: /u/{id}/{id},", "11:19",
         "routes[0].match.path: '/u/{id}/{id}': the parameter {id} appears twice"),
        ("version: 1", "version: true", "1:10", "version: must be the integer 1; got True"),
        ("version: 1", "version: 1.0", "1:10", "version: must be the integer 1; got 1.0"),
    ],
)  # fmt: skip
def test_values_that_cannot_work_are_refused(old: str, new: str, where: str, message: str) -> None:
    assert old in GOOD
    (err,) = errors(GOOD.replace(old, new))
    assert err.startswith(f"f.yaml:{where}: {message}")


@pytest.mark.parametrize("admin", ["127.0.0.1:9901", "127.0.0.2:8080", "[::1]:8080", "127.0.0.1:0"])
def test_admin_beside_listen_loads(admin: str) -> None:
    text = GOOD.replace("admin: 127.0.0.1:9901", f"admin: '{admin}'")
    if admin.endswith(":0"):
        text = text.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
    else:
        text = text.replace(
            "listen: 127.0.0.1:8080",
            "listen: 0.0.0.0:8080" if "::" in admin else "listen: 127.0.0.1:8080",
        )
    assert load_text(text, "f.yaml")[0].admin == admin


def test_the_schema_accepts_what_check_accepts_env_values_and_bare_policies() -> None:
    # An editor checking the file against `gateway schema` flagged `${VAR}` in a number
    # or boolean field and a policy written without a value, both of which load.
    import jsonschema

    from gateway.config.schema import policy_file_schema

    schema = policy_file_schema()
    upstream = {
        "url": "http://127.0.0.1:1",
        "verify_tls": "${VERIFY:-true}",
        "pool": {"max_connections": "${POOL}"},
        "timeouts": {"read": "${READ_TIMEOUT:-30s}"},
    }
    rate_limit = [{"name": "g", "rate": "5/s", "algorithm": "${ALGORITHM}", "burst": "${B}"}]
    doc = {
        "version": 1,
        "listen": "${LISTEN:-127.0.0.1:8080}",
        "upstreams": {"app": upstream},
        "routes": [
            {"name": "r", "match": {"prefix": "/"}, "upstream": "app",
             "policies": {"noop": None, "rate_limit": rate_limit}},
            {"name": "bare", "match": {"prefix": "/b"}, "upstream": "app", "policies": None},
        ],
    }  # fmt: skip
    jsonschema.validate(doc, schema)

    refused = [
        ("verify_tls", "maybe"),  # neither a boolean nor a ${VAR}
        ("pool", {"max_connections": "many"}),
    ]
    for key, value in refused:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**doc, "upstreams": {"app": {**upstream, key: value}}}, schema)
    # A list-valued policy has no defaults: `rate_limit:` alone is refused, as by check.
    bare = {"name": "r", "match": {"prefix": "/"}, "upstream": "app",
            "policies": {"rate_limit": None}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "routes": [bare]}, schema)
    # And check loads the same things.
    text = """\
        version: 1
        listen: ${LISTEN:-127.0.0.1:8080}
        upstreams: {app: {url: "http://127.0.0.1:1", pool: {max_connections: "${POOL:-8}"}}}
        routes:
          - {name: r, match: {prefix: /}, upstream: app, policies: {noop: }}
          - {name: bare, match: {prefix: /b}, upstream: app, policies: }
        """
    config = load_text(textwrap.dedent(text), "f.yaml")[0]
    assert config.upstreams["app"].pool.max_connections == 8
