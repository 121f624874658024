"""`python -m api`: serve the API on Settings' HOST and PORT (127.0.0.1:8000 by default).

The bind address comes from Settings, the same object that decides whether writes need a
key, so the server can never listen more widely than the policy it applies believes.
"""

import argparse

from bertheads.settings import Settings


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """`--host` and `--port` override HOST and PORT."""
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to bind (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT, else 8000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Read Settings, build the app and run it under uvicorn until stopped."""
    import uvicorn
    from pydantic import ValidationError

    from api.main import create_app

    arguments = parse_arguments(argv)
    overrides = {
        key: value
        for key, value in (("host", arguments.host), ("port", arguments.port))
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SystemExit(f"python -m api: invalid settings: {error}") from None
    app = create_app(settings)
    # log_config=None keeps the app's JSON logs; the app logs each request itself.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
