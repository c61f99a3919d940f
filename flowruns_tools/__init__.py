"""The proof and demo tools around the flowruns worker: `flowruns bench`, `flowruns chaos`,
`flowruns demo` and the run-graph renderer behind `flowruns graph`.

None of it is needed to run the worker: `celery -A tasks worker` imports nothing from here, and
`tasks.cli` imports these modules only inside the commands that use them.
"""
