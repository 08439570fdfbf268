from cp.cli.main import run

run()
