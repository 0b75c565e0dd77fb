"""Report templates; generated reports go under each run folder, published results under published/."""
