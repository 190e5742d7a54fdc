"""Faithful fakes of hardware this machine lacks (NVML, RAPL) and scripted sensors."""
