"""The course kit: the handout and its grader, the leaderboard, the derivations' closed forms."""
