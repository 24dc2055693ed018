"""report.html: the run summary, score histograms, viral records and their score tracks."""
