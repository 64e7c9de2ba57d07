"""Reports: plots and documents read only from the files runs write."""
