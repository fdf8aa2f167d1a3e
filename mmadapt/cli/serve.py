"""`mmadapt serve`: the current version of each recipe behind OpenAI-compatible endpoints."""

from __future__ import annotations

import click

from mmadapt.cli.common import output_dir_option


@click.command()
@click.argument("recipes", nargs=-1, required=True, metavar="RECIPE_OR_NAME...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (beyond loopback: --api-key is required).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="MMADAPT_API_KEY", default=None, help="Clients send Authorization: Bearer KEY (env MMADAPT_API_KEY).")
@click.option("--split", "splits", multiple=True, metavar="NAME=vA:W,vB:W",
              help="A/B split of a recipe's traffic by weight, sticky per user (repeatable), e.g. zentrix=v0003:90,v0004:10.")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests waiting per loaded version; one more is answered 429.")
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Most inputs of waiting requests one version answers in one batch.")
@click.option("--max-body-mb", default=25.0, show_default=True, type=click.FloatRange(0.001, 1024), help="Larger bodies: 413.")
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(1), help="Largest max_tokens a request may ask for.")
@click.option("--max-n", default=4, show_default=True, type=click.IntRange(1, 128), help="Most images (or choices) per request.")
@click.option("--max-prompt-chars", default=32_000, show_default=True, type=click.IntRange(1), help="Most text per request.")
@click.option("--redact-inputs", is_flag=True, help="Log a sha256 of each request's input instead of the input.")
@click.option("--cache-size", default=4, show_default=True, type=click.IntRange(1, 64), help="Loaded versions kept in memory.")
@output_dir_option
def serve(recipes: tuple[str, ...], host: str, port: int, api_key: str | None, splits: tuple[str, ...], max_queue: int,
          max_batch: int, max_body_mb: float, max_tokens: int, max_n: int, max_prompt_chars: int, redact_inputs: bool, cache_size: int,
          output_dir: str | None) -> None:
    """Serve the current version of each recipe (OpenAI-compatible; `registry promote` / `rollback` apply live).

    \b
    Endpoints: POST /v1/chat/completions (text), /v1/audio/transcriptions (speech),
    /v1/images/generations (image), GET /v1/models, POST /v1/feedback.
    Requests are logged to runs/<name>/serve/requests.jsonl.

    \b
    Examples:
      mmadapt serve recipes/text/zentrix-support.yaml
      mmadapt serve zentrix-support speech-domain-vocab --port 8080 --split zentrix-support=v0003:90,v0004:10
      mmadapt serve zentrix-support --host 0.0.0.0 --api-key "$KEY"
    """
    from mmadapt.cli.registry import _recipe_dir
    from mmadapt.serve.app import check_host, create_app, run_server
    from mmadapt.serve.split import parse_split
    from mmadapt.serve.wire import ServeLimits

    check_host(host, api_key)
    folders = {}
    for target in recipes:
        rdir = _recipe_dir(target, output_dir)
        folders[rdir.name] = rdir
    limits = ServeLimits(max_body_bytes=int(max_body_mb * 2**20), max_tokens=max_tokens, max_n=max_n, max_prompt_chars=max_prompt_chars)
    app = create_app(folders, api_key=api_key, split=parse_split(splits), limits=limits, max_queue=max_queue,
                     max_batch=max_batch, cache_size=cache_size, redact_inputs=redact_inputs)
    click.echo(f"serving {', '.join(f'{n}@{app.state.router.current[n].name}' for n in folders)} on http://{host}:{port}/v1", err=True)
    run_server(app, host=host, port=port)
