"""Write a 0-score results.json holding the end of pytest's log, when pytest could not even start (run_autograder).

    python3 no_results.py RESULTS_JSON PYTEST_LOG
"""
import json
import sys

log = open(sys.argv[2]).read()[-3000:]
json.dump({"score": 0, "output": "The tests could not run:\n" + log}, open(sys.argv[1], "w"))
