"""What only the book's pages use: display helpers (:mod:`cmmc.book.report`: tables, HTML,
published numbers, verdicts).

Needs pandas and IPython (``pip install cmmc[book]``); the library itself never imports this
package. Code moves here from a page only when a second page needs it.
"""
