"""Realistic sample traffic (``metering simulate``): see :mod:`metering.simulate.generator`."""
