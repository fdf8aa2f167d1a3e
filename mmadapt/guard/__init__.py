"""Guardrails: a recipe's ``guard:`` section, its text rules, and the predictor that applies them."""
