"""Forecasting: arrays and dataclasses in, forecasts out. Imports nothing from balancer/ or pools/."""
