"""Run suites of CPython's own `test` package and print one line per test case.

Usage: python3 py_suites.py test_dict [test_list ...]

stdout gets "<outcome> <test id>" lines, sorted, plus a summary per suite, so
that runs under glibc and under rmalloc can be compared line by line.  The
suites' own chatter goes to stderr.  Exit status is 1 if any test failed or
errored.  Like `python3 -m test` without `-u`, optional resources (network,
cpu-hungry tests, ...) are not enabled; they are reported as skipped.
"""

import sys
import unittest

from test import support

support.use_resources = []  # as regrtest does without -u: resource-gated tests skip
support.verbose = False


class Recorder(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = []

    def _note(self, test, outcome):
        self.outcomes.append((test.id(), outcome))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._note(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._note(test, "FAIL")

    def addError(self, test, err):
        super().addError(test, err)
        self._note(test, "ERROR")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._note(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._note(test, "expected-failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._note(test, "UNEXPECTED-SUCCESS")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
            self._note(subtest, kind)


def main(names):
    bad = 0
    for name in names:
        suite = unittest.defaultTestLoader.loadTestsFromName("test." + name)
        runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=1, resultclass=Recorder)
        result = runner.run(suite)
        for test_id, outcome in sorted(result.outcomes):
            print("%s %s" % (outcome, test_id))
        n_ok = sum(1 for _, o in result.outcomes if o == "ok")
        print(
            "suite %s: run=%d ok=%d failures=%d errors=%d skipped=%d"
            % (name, result.testsRun, n_ok, len(result.failures), len(result.errors), len(result.skipped))
        )
        if not result.wasSuccessful():
            bad += 1
    sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
