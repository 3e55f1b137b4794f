"""LLM-as-judge evaluation of served models: questions, answers, grading, leaderboard."""
