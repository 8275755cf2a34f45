from slmloop.cli import run

run()
