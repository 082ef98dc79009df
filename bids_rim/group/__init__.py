"""Statistics across subjects and sites, and template-space frequency maps."""
