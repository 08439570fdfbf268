"""Alert rules from the configuration, their evaluation, grouping, inhibition and silences."""
