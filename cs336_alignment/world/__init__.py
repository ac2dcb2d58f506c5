"""The task world: seeded problems, their gold verifier (and the lessons' request kinds)."""
