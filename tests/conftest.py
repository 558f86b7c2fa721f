import uvloop


def pytest_asyncio_loop_factories(config, item):
    # The proxy runs on uvloop in production; tests exercise the same loop.
    return {"uvloop": uvloop.new_event_loop}
