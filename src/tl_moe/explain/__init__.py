"""Automatic labeling of experts: examples, explainers, scorers, controls, a resumable runner."""
