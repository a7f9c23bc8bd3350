"""End-to-end provisioning benchmark and fault drills (issue 7).

One controller over RabbitMQ (`python main.py controller`), one real agent (`python main.py
agent`) on a private Open vSwitch with the userspace datapath, and N-1 simulated agents running the
agent's own stream code; ports are created through the API at a steady rate and in bursts, and each
is timed from API accepted to status ACTIVE. Then the fault drills. Run:

    .venv/bin/python -m bench.e2e --nodes 100 --ports 10000
    .venv/bin/python -m bench.e2e --nodes 1000 --ports 100000 --drills none
    .venv/bin/python -m bench.e2e --nodes 8 --ports 400 --drills all     # what the test suite runs

Modules: cluster (the processes), fleet (simulated agents), harness (load, observation, checks),
drills, report (Markdown, JSON, PNG).
"""
