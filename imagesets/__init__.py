"""Synthetic image sets the project trains and evaluates on: real image files, made here.

Each module renders one family of uploads from a seed, so every set can be made again:
`renderings` (MNIST digits as people send them), `nondigits` (what is not one digit),
`photos` (phone photos of digits on paper).
"""
