using DotQuant.Tool;

return Cli.Run(args, Console.Out, Console.Error);
