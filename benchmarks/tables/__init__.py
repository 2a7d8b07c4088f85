"""The papers' reported tables as YAML data (one file per paper); see benchmarks/schema.py for the format."""
